"""Everything written to disk: pure rendering (arrays in, uint8 images out), atomic file writing,
the one registry of writers that turn an Attribution into files and manifest columns (``writers``),
what a manifest row holds (``items``), the manifest, the gallery, the metric summary and the
environment record.

It takes arrays, rows and names; it never imports a model (``cnnviz.models``), a technique's
internals, or Hydra.
"""
