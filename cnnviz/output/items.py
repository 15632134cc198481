"""What a manifest row holds: one row per Attribution of a call, its files written by the writers
(``cnnviz.output.writers``). ``cnnviz.api.Explanation`` and the runner both write through ``rows``,
so a notebook's files and a run's files are made by one code path."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core.attribution import Attribution
from .files import write_png
from .render import RenderOptions
from .writers import Item, class_name, write

_INPUTS: dict[Path, tuple[str, str]] = {}
_INPUTS_LOCK = threading.Lock()  # the runner writes the items of one image on several threads


def _write_input(path: Path, picture: np.ndarray) -> str:
    """Write the input picture unless this process already wrote the same picture there (the calls of
    one image share it); its sha256."""
    digest = hashlib.sha256(picture.tobytes() + str(picture.shape).encode()).hexdigest()
    with _INPUTS_LOCK:
        known = _INPUTS.get(path)
        if known is not None and known[0] == digest and path.is_file():
            return known[1]
        sha = write_png(path, picture)
        _INPUTS[path] = (digest, sha)
        return sha


def stem(image: str, method: str, layer: Optional[str], target: Optional[int], with_target: bool) -> str:
    parts = [image, method] + ([layer] if layer else []) + ([f"t{target}"] if with_target else [])
    return "_".join(parts)


def prediction_columns(attr: Attribution, class_names: Sequence[str], target_kind: Any = None) -> dict[str, Any]:
    """The target and prediction columns of one image's row. A target kind with columns of its own
    (``cnnviz.core.targets.OutputScore``: a continuous output, a similarity) gives them: its index,
    what it is and its value, with no class, prediction or probability, since the output is no
    class logit; class targets get the class, the top-1 and their softmax probabilities."""
    if target_kind is not None and hasattr(target_kind, "columns"):
        return target_kind.columns(attr.logits)
    probs = attr.probabilities[0]
    pred = int(probs.argmax())
    target = attr.target[0] if attr.target else None
    return {
        "target": target, "target_name": class_name(class_names, target),
        "predicted": pred, "predicted_name": class_name(class_names, pred), "predicted_prob": float(probs[pred]),
        "target_prob": float(probs[target]) if target is not None else None,
    }


def detection_columns(det: Any, to_original: Optional[Callable[[Sequence[float]], Sequence[float]]]) -> dict[str, Any]:
    """The columns of a detection's row: its index on the image, box (original-image pixels when
    ``to_original`` maps them, else input pixels), class, name, score and whether it was detected
    or given; the target columns name the detection's class and score, not its index."""
    box = to_original(det.box) if to_original is not None else det.box
    return {"target": det.label, "target_name": det.label_name, "target_prob": det.score,
            "predicted": det.label, "predicted_name": det.label_name, "predicted_prob": det.score,
            "detection": det.index, "detection_label": det.label, "detection_score": det.score,
            "detection_source": det.source,
            **{f"detection_{k}": round(float(v), 1) for k, v in zip(("x0", "y0", "x1", "y1"), box)}}


@dataclass(frozen=True)
class Call:
    """The Attributions of one call of a technique, with everything their rows and files need."""

    image: str
    #: the ``(H, W, 3)`` uint8 picture the Attributions explain
    picture: np.ndarray
    attributions: Sequence[Attribution]
    #: writer specs (``writers.outputs(renders, writes)``)
    outputs: Sequence[str]
    class_names: Sequence[str] = ()
    #: run-level columns added to every row (model, weights, duration ...)
    meta: dict[str, Any] = field(default_factory=dict)
    #: a box in input pixels -> original-image pixels (``writers.Item.to_original``)
    to_original: Optional[Callable[[Sequence[float]], Sequence[float]]] = None
    #: notes about the input (e.g. only an animation's first frame is used), before each row's own
    warnings: tuple[str, ...] = ()
    #: the target the Attributions explain when it brings its own columns (``prediction_columns``), else None
    target_kind: Any = None


def rows(call: Call, out_dir: Path, options: RenderOptions, with_target: bool = False) -> list[dict[str, Any]]:
    """Write every file of ``call``; one manifest row (without run-level columns) per Attribution."""
    out_dir = Path(out_dir)
    input_name = f"{call.image}_input.png"  # the picture once per call, shared by its rows
    picture = {"file_input": input_name, "sha256_input": _write_input(out_dir / input_name, call.picture)}
    out = []
    # a detection's item (``cnnviz.models.detection.DetectionItem``, read as data): its columns, its
    # index in the file names, its box drawn
    det = call.meta.get("detection")
    meta = {k: v for k, v in call.meta.items() if k != "detection"}
    for attr in call.attributions:
        row = {"image": call.image, "layer": attr.layer, "method": attr.method, "params": attr.params,
               **meta, **prediction_columns(attr, call.class_names, call.target_kind)}
        name = stem(call.image, attr.method, attr.layer, row["target"], with_target)
        boxes = ()
        if det is not None:
            row.update(detection_columns(det, call.to_original))
            name, boxes = f"{name}_d{det.index}", ((det.box, det.caption),)
        item = Item(attr, name, out_dir, call.picture, options, call.class_names, call.to_original, boxes,
                    bool(getattr(det, "per_box", False)))
        row.update(picture)
        row.update(write(item, call.outputs))
        row.update(attr.metrics)
        warnings = "; ".join(filter(None, [*call.warnings, "; ".join(attr.warnings)]))
        row.update(status="ok", error="", warnings=warnings, layers_in_call=len(call.attributions))
        out.append(row)
    return out
