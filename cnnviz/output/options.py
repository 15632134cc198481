"""How maps are drawn: the render options and their constraints, declared once. Imports neither
numpy nor matplotlib (the colormap names are read only when a non-default colormap is checked), so
the runner's configuration schema can reuse this declaration and still compose quickly."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.constraints import check_fields, param


def colormap_names() -> list[str]:
    """matplotlib's colormap names (``jet``, ``viridis``, ``viridis_r`` ...), imported only when a
    colormap other than the default is checked."""
    from matplotlib import colormaps

    return sorted(colormaps)


@dataclass(frozen=True)
class RenderOptions:
    """How maps are drawn. The one declaration of these options and their constraints: the runner's
    ``render`` config (``cnnviz.app.schema.RenderConfig``) is made from these fields, so the library
    and the runner refuse the same values with the same message (key ``render.<field>``)."""

    #: a matplotlib colormap name, for the CAM heatmaps and overlays
    colormap: str = param("jet", choices=colormap_names, kind="colormap")
    #: opacity of the heatmap over the image: 0 shows only the image, 1 only the heatmap
    alpha: float = param(0.4, min=0, max=1)

    def __post_init__(self):
        check_fields(self, "render")
