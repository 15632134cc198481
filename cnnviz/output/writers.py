"""The one route from an Attribution to files and manifest columns: a registry of writers.

Every output of an item goes through ``WRITERS``, named by a spec ``"<writer>:<key>"``:

- ``render:<kind>``: a picture drawn by ``render.RENDERERS[kind]`` -> ``<stem>_<kind>.png``,
  columns ``file_<kind>`` / ``sha256_<kind>`` (a method's ``renders`` become these specs);
- ``raw:values`` / ``raw:upsampled``: the signed map and its upsampled copy -> ``<stem>.npy`` /
  ``<stem>_upsampled.npy`` (columns ``npy`` / ``npy_upsampled``);
- ``png`` / ``strip`` / ``gif`` / ``csv`` / ``plot`` / ``npy`` ``:<key>``: ``Attribution.extras[key]``
  encoded -> ``<stem>_<key><suffix>``, columns ``file_<writer>_<key>`` (a method's or a metric's
  ``writes``);
- ``legend:<key>``: a label map with its legend (``extras[key]`` has ``image``, ``classes`` and
  ``colors``, e.g. a ``LabelLegend``), drawn with the class names the item carries -> ``<stem>_<key>.png``
  (column ``png_<key>``);
- ``box:<key>``: no file, the columns ``box_x0`` ... ``box_y1`` from ``extras[key]`` (input pixels),
  mapped to original-image pixels by the item's ``to_original``.

A writer whose key is absent from the extras writes nothing (an item may lack an optional extra,
e.g. a metric's curve when the metric is off). A new output is one ``@writer`` function here.
Knows arrays, bytes and names, never models: class names and the box mapping come in as data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..core.attribution import Attribution
from . import render
from .files import atomic_write, csv_bytes, gif_bytes, npy_bytes, png_bytes, write_png


def class_name(names: Sequence[str], index: Optional[int]) -> str:
    """The name of class ``index``; its number when the list has no name for it; "" for none."""
    if index is None or index < 0:
        return ""
    return names[index] if index < len(names) else str(index)


@dataclass(frozen=True)
class Item:
    """What a writer sees: one Attribution, the file name stem of its files, the folder, the picture it
    explains (``(H, W, 3)`` uint8), how to draw, the class names and the box mapping (both data)."""

    attr: Attribution
    stem: str
    out_dir: Path
    picture: np.ndarray
    options: render.RenderOptions
    class_names: Sequence[str] = ()
    #: a box in input pixels -> the same box in original-image pixels; None: boxes stay in input pixels
    to_original: Optional[Callable[[Sequence[float]], Sequence[float]]] = None
    #: ``((x0, y0, x1, y1), caption)`` in input pixels, drawn on every colour render of the input's
    #: size (a detection's box); ``per_box``: the renders of a CAM normalised inside the first box,
    #: those of an input-space map made from its values inside the box (0 outside)
    boxes: tuple = ()
    per_box: bool = False

    @property
    def values(self) -> np.ndarray:
        return self.attr.values[0]

    @property
    def cam(self) -> Optional[np.ndarray]:
        return self.attr.upsampled[0] if self.attr.upsampled is not None else None

    def file(self, kind: str, filename: str, data: bytes | np.ndarray) -> dict[str, Any]:
        """Write ``data`` (bytes, or a uint8 image written as PNG) as ``filename``; its two columns."""
        path = self.out_dir / filename
        sha = write_png(path, data) if isinstance(data, np.ndarray) else atomic_write(path, data)
        return {f"file_{kind}": filename, f"sha256_{kind}": sha}


#: writer name -> function(item, key) writing the item's files, returning its manifest columns
WRITERS: dict[str, Callable[[Item, str], dict[str, Any]]] = {}


def writer(name: str):
    """Register a writer under ``name`` (a duplicate name is an error, as in the technique registry)."""
    def add(fn: Callable[[Item, str], dict[str, Any]]):
        if name in WRITERS:
            raise ValueError(f"writer '{name}' is already registered")
        WRITERS[name] = fn
        return fn
    return add


@writer("render")
def _render(item: Item, kind: str) -> dict[str, Any]:
    values, cam = item.values, item.cam
    if item.per_box and item.boxes:  # the raw arrays stay as computed; only the pictures change
        box = item.boxes[0][0]
        if cam is not None:
            cam = render.normalised_in_box(cam, box)
        else:
            values = render.inside_box(values, box)
    img = render.RENDERERS[kind](values, cam, item.picture, item.options)
    if item.boxes and img.ndim == 3 and img.shape[:2] == item.picture.shape[:2]:
        img = render.draw_boxes(img, [b for b, _ in item.boxes], [c for _, c in item.boxes])
    return item.file(kind, f"{item.stem}_{kind}.png", img)


@writer("raw")
def _raw(item: Item, key: str) -> dict[str, Any]:
    if key == "values":
        return item.file("npy", f"{item.stem}.npy", npy_bytes(item.values))
    if key == "upsampled":
        return {} if item.cam is None else item.file("npy_upsampled", f"{item.stem}_upsampled.npy", npy_bytes(item.cam))
    raise ValueError(f"raw:{key}: the raw arrays are raw:values and raw:upsampled")


def _extra(name: str, suffix: str, encode: Callable[[str, Any], bytes]) -> None:
    """A writer of ``extras[key]`` as ``<stem>_<key><suffix>``."""
    def write(item: Item, key: str) -> dict[str, Any]:
        if key not in item.attr.extras:
            return {}
        return item.file(f"{name}_{key}", f"{item.stem}_{key}{suffix}", encode(key, item.attr.extras[key]))
    writer(name)(write)


_extra("png", ".png", lambda key, v: png_bytes(v))
_extra("strip", "_strip.png", lambda key, v: png_bytes(render.image_strip(v)))
_extra("gif", ".gif", lambda key, v: gif_bytes(v))
_extra("csv", ".csv", lambda key, v: csv_bytes(v))
_extra("plot", "_plot.png", lambda key, v: png_bytes(render.curve_plot(v, key.replace("_", " "))))
_extra("npy", ".npy", lambda key, v: npy_bytes(v))


@writer("legend")
def _legend(item: Item, key: str) -> dict[str, Any]:
    legend = item.attr.extras.get(key)
    if legend is None:
        return {}
    names = [f"{c} {class_name(item.class_names, c)}" for c in legend.classes]
    return item.file(f"png_{key}", f"{item.stem}_{key}.png", png_bytes(render.label_legend(legend.image, legend.colors, names)))


@writer("box")
def _box(item: Item, key: str) -> dict[str, Any]:
    box = item.attr.extras.get(key)
    if box is None:
        return {}
    if item.to_original is not None:
        box = item.to_original(box)
    return dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), (int(v) for v in box)))


def parse(spec: str) -> tuple[str, str]:
    writer_name, sep, key = spec.partition(":")
    if not sep or writer_name not in WRITERS or not key:
        raise ValueError(f"output spec '{spec}' must be '<writer>:<key>' with writer one of {', '.join(WRITERS)}")
    return writer_name, key


def outputs(renders: Sequence[str], writes: Sequence[str]) -> tuple[str, ...]:
    """Every spec of an item, in the order its files are written: the method's renders, the raw
    arrays, the method's and metrics' ``writes``, and the box a technique may return."""
    return (*(f"render:{k}" for k in renders), "raw:values", "raw:upsampled", *writes, "box:bbox")


def write(item: Item, specs: Sequence[str]) -> dict[str, Any]:
    """Run the writer of each spec on ``item``; the columns of them all."""
    cols: dict[str, Any] = {}
    for spec in specs:
        name, key = parse(spec)
        cols.update(WRITERS[name](item, key))
    return cols


def extra_files(specs: Sequence[str], extras: dict[str, Any], class_names: Sequence[str] = ()) -> Iterator[tuple[str, str, bytes]]:
    """``(column kind, file suffix, bytes)`` for each spec whose key is in ``extras``, without writing
    anything (the bytes the writers would write; for checking that a technique's outputs encode)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        attr = _Extras(extras)
        for spec in specs:
            cols = write(Item(attr, "x", Path(folder), np.zeros((1, 1, 3), np.uint8), render.RenderOptions(), class_names), (spec,))
            for column, filename in cols.items():
                if column.startswith("file_"):
                    yield column[len("file_"):], filename[len("x_"):], (Path(folder) / filename).read_bytes()


@dataclass(frozen=True)
class _Extras:
    """Just enough of an Attribution for the extras' writers."""

    extras: dict[str, Any]
