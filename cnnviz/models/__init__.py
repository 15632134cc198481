"""Model loaders named by ``model._target_`` (``conf/model/*.yaml``): the embedded
efficientnet_lite0, torchvision and timm classifiers, local checkpoints, torchvision segmentation
networks; and the strict registry of loaders (``registry.py``), the only way a config builds one.

Loaders import the core's errors and ``output.files`` (a weights file's sha256); no technique, no Hydra.
"""
