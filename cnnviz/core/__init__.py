"""The core every technique may import: the ``Attribution`` result type, errors, the strict
registry, targets, layer lookup, hooks (only inside context managers), the shared forward/backward
passes, map helpers, input-space statistics and hyperparameter constraints.

Nothing here knows Hydra, files, models on disk, or any particular technique; it imports only
torch, numpy and itself.
"""
