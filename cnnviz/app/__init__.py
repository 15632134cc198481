"""The application: the only package that imports Hydra and OmegaConf. It holds the config schema,
the checks before Hydra composes (choices), the plan (config -> plain objects), the runner, sweeps,
archives (lock, recorded config, what may be built from one), verify, rerun and the command line.

It turns a configuration into the same objects a notebook user passes to ``cnnviz.api`` and
``cnnviz.engine``; nothing outside ``app/`` imports it.
"""
