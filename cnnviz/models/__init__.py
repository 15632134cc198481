"""Model loaders named by ``model._target_`` (``conf/model/*.yaml``): the embedded
efficientnet_lite0/1/2, torchvision and timm classifiers, local checkpoints, torchvision segmentation
networks and detectors, the ground-truth benchmark CNN; wrappers that turn other outputs into scores
(``outputs.py``: regression outputs, embedding similarity, dict/tuple outputs); and the strict
registry of loaders (``registry.py``), the only way a config builds one.

Loaders import the core's errors and ``output.files`` (a weights file's sha256), and ``benchmark_cnn``
imports ``cnnviz.benchmark`` (its data and training); no technique, no Hydra.
"""
