"""Files made from an Attribution's ``extras``: a method lists ``"<writer>:<key>"`` specs in
``writes`` (e.g. ``"gif:snapshots"``), and each becomes ``<stem>_<key><suffix>`` with manifest
columns ``file_<writer>_<key>`` / ``sha256_<writer>_<key>``. Knows arrays and bytes, never models."""
from __future__ import annotations

from typing import Any, Callable, Iterator

from ..output import render
from .files import csv_bytes, gif_bytes, npy_bytes, png_bytes

#: writer -> (file name suffix after the key, encoder of the extra's value)
WRITERS: dict[str, tuple[str, Callable[[str, Any], bytes]]] = {
    "png": (".png", lambda key, v: png_bytes(v)),
    "strip": ("_strip.png", lambda key, v: png_bytes(render.image_strip(v))),
    "gif": (".gif", lambda key, v: gif_bytes(v)),
    "csv": (".csv", lambda key, v: csv_bytes(v)),
    "plot": ("_plot.png", lambda key, v: png_bytes(render.curve_plot(v, key.replace("_", " ")))),
    "npy": (".npy", lambda key, v: npy_bytes(v)),
}


def parse(spec: str) -> tuple[str, str]:
    writer, sep, key = spec.partition(":")
    if not sep or writer not in WRITERS or not key:
        raise ValueError(f"output spec '{spec}' must be '<writer>:<key>' with writer one of {', '.join(WRITERS)}")
    return writer, key


def extra_files(specs: tuple[str, ...], extras: dict[str, Any]) -> Iterator[tuple[str, str, bytes]]:
    """``(column kind, file suffix, bytes)`` for each spec whose key is in ``extras`` (an item may
    lack an optional extra, e.g. a metric's curve when the metric is off)."""
    for spec in specs:
        writer, key = parse(spec)
        if key in extras:
            suffix, encode = WRITERS[writer]
            yield f"{writer}_{key}", f"{key}{suffix}", encode(key, extras[key])
