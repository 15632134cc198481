"""The ground-truth benchmark: procedural images whose class evidence is known per pixel
(``data.py``: a shape planted among same-coloured distractors on natural-ish backgrounds, with its
mask) and the small CNN trained on them (``model.py``: architecture, seeded training, and the cached
checkpoint with its sha256, plus a copy trained on shuffled labels for the data-randomization test).

Nothing here is imported when cnnviz is; the model loader ``model=benchmark_cnn``
(``cnnviz.models.benchmark_cnn``) imports it when a run needs the network.
"""
