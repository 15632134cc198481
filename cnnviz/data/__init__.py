"""Reading images (files, folders, presets, scikit-image samples; EXIF orientation, size limits)
and turning them into normalised model inputs.

It imports the core's errors and nothing else of cnnviz: no model, no technique, no Hydra.
"""
