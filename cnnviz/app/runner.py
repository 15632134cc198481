"""Run a plan: every image x method x layer x target, each written as files plus a manifest row."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from ..output.envinfo import environment
from ..api import Explanation
from ..core.errors import ConfigError
from ..engine import ItemResult, compute_batch
from ..speed.precision import precision_scope, to_device
from ..speed import applied
from ..output.files import atomic_write
from ..output.gallery import write_gallery
from ..data.images import box_to_input, mask_to_input, preprocess
from ..output.manifest import Manifest
from ..output.render import RenderOptions
from ..metrics import evaluate_rows, writes_of
from ..metrics.pointing_game import box_mask
from .plan import Plan, build_plan
from ..output.summary import write_summary
from ..models.detection import DetectionItem, DetectionRequest, references
from ..speed.fastpath import exact

log = logging.getLogger("cnnviz")


@dataclass(frozen=True)
class Unit:
    """One call of a technique: an image, a target, and every layer it serves in that call."""

    image: int
    method: str
    layers: tuple[str, ...]
    target: Any

    @property
    def target_request(self) -> str:
        return "default" if self.target is None else str(self.target)


def units_of(plan: Plan, image: int, target: Any) -> list[Unit]:
    """The calls of one image and target request: one per technique."""
    return [Unit(image, m, tuple(plan.layers[m]), target) for m in plan.methods]


@dataclass(frozen=True)
class LoadedImage:
    """An image read and preprocessed for the model."""

    #: the image's name in the plan (the ``image`` column, the files' stem)
    name: str
    sha256: str
    x: torch.Tensor
    #: the uint8 (H, W, 3) picture the input shows
    picture: Any
    #: the object on the input: its mask (a list's ``mask`` column) or box (``image.<key>.box``), or None
    mask: Any
    #: the original image's (w, h)
    size: tuple[int, int]
    #: notes from reading (e.g. only the first frame of an animation is used), added to each row
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunOutput:
    """Where and how every item of a run is written."""

    plan: Plan
    out_dir: Path
    options: RenderOptions
    #: several targets per image: the files' names carry the target (``_t<k>``)
    with_target: bool


def execute(plan: Plan, out_dir: Path, load_s: float = 0.0, manifest: Manifest | None = None) -> pd.DataFrame:
    """Compute every item of ``plan`` into ``out_dir``; ``load_s``: the time the plan took to build
    (model load), reported with the run's own timing in the log and in ``progress.json``;
    ``manifest``: the folder's manifest when the caller has already read (and checked) it.
    The configuration's accelerations (``plan.speed``) apply to this run only, metrics included."""
    with applied(plan.speed):
        return _execute(plan, out_dir, load_s, manifest)


def _execute(plan: Plan, out_dir: Path, load_s: float, manifest: Manifest | None) -> pd.DataFrame:
    wall0 = time.perf_counter()
    clock = {"compute": 0.0}
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    # env.json (a git call) and the next batch's images are done by background threads while the
    # techniques compute
    env_written = _writers().submit(_write_env, out_dir, plan)
    manifest = manifest if manifest is not None else Manifest(out_dir / "manifest.csv")
    weights_id = weights_identity(plan.model)
    calls = len(plan.images) * len(plan.methods) * len(plan.targets)
    planned = len(plan.images) * len(plan.targets) * sum(len(plan.layers[m]) or 1 for m in plan.methods)
    atomic_write(out_dir / "progress.json", json.dumps({"planned_rows": planned, "calls": calls}).encode())
    output = RunOutput(plan, out_dir, RenderOptions(plan.render.colormap, float(plan.render.alpha)), len(plan.targets) > 1)
    log.info("%d calls: %d image(s) x %d method(s) x %d target(s), model %s, batches of %d",
             calls, len(plan.images), len(plan.methods), len(plan.targets), plan.model.name, plan.batch_size)
    progress = tqdm(total=calls, desc="cnnviz", unit="call", disable=None)
    skipped = 0
    batches = [range(k, min(k + plan.batch_size, len(plan.images))) for k in range(0, len(plan.images), plan.batch_size)]
    # two batches of images in memory at a time: this one and the next, read while this one computes;
    # the items of one batch are written while the next computes
    upcoming = _prefetch(plan, batches[0]) if batches else None
    writing: list = []
    for k, batch in enumerate(batches):
        loaded = [f.result() for f in upcoming]
        upcoming = _prefetch(plan, batches[k + 1]) if k + 1 < len(batches) else None
        for target_request in plan.targets:
            work, done = _batch_work(plan, batch, loaded, target_request, weights_id, manifest, out_dir)
            skipped += done
            progress.update(done)
            if not work:
                continue
            start = time.perf_counter()
            results = _compute_work(plan, work)
            clock["compute"] += time.perf_counter() - start
            writing = _collect(writing, manifest, progress)
            writing = [(item, u, _writers().submit(_item_rows, u, item.base[u.method], results[item.index][u.method],
                                                   item.image, output)) for item in work for u in item.units]
    _collect(writing, manifest, progress)
    progress.close()
    env_written.result()
    frame = manifest.frame()
    gallery0 = time.perf_counter()
    write_gallery(out_dir, frame)
    clock["gallery"] = time.perf_counter() - gallery0
    if plan.metrics:
        write_summary(out_dir, frame)
    failed = int((frame["status"] == "error").sum())
    if skipped:
        log.info("resume: %d item(s) already complete, skipped", skipped)
    log.info("done: %d ok, %d failed; outputs in %s", len(frame) - failed, failed, out_dir)
    report_timing(out_dir, planned, calls, load_s, time.perf_counter() - wall0, clock)
    return frame


@dataclass
class Work:
    """One image's calls for one target request, in a batch."""

    #: position in the batch's work list (results are looked up by it)
    index: int
    src: Any
    image: Optional[LoadedImage]
    #: None when the image cannot be computed (unreadable, no label): then the error
    error: Optional[Exception]
    target: Any
    units: list[Unit]
    base: dict
    #: the model the item runs on when it is not the plan's: a detection's wrapper for its image
    model: Any = None


def _prefetch(plan: Plan, batch: range) -> list:
    return [_writers().submit(_load, plan.images[i], plan) for i in batch]


def _collect(writing: list, manifest: Manifest, progress) -> list:
    """Wait for the written items of the previous batch and put their rows into the manifest (one write)."""
    if not writing:
        return []
    rows = []
    for item, unit, future in writing:
        for row in future.result():
            _log_row(item.src.name, unit, row)
            rows.append(row)
        progress.update(1)
    manifest.extend(rows)
    return []


def _batch_work(plan: Plan, batch: range, loaded: list, target_request: Any, weights_id: str, manifest: Manifest,
                out_dir: Path) -> tuple[list[Work], int]:
    """The calls still to do for the images of a batch and one target request, and how many items are done."""
    if isinstance(target_request, DetectionRequest):
        return _detection_work(plan, batch, loaded, target_request, weights_id, manifest, out_dir)
    work, done_total = [], 0
    for i, image in zip(batch, loaded):
        src = plan.images[i]
        units = units_of(plan, i, target_request)
        base = _item_base(plan, src, units, weights_id)
        if plan.resume:
            # complete only for the same bytes: an image replaced under the same name is recomputed
            content = None if isinstance(image, Exception) else {"image_sha256": image.sha256, "weights_sha256": weights_id}
            units, done = missing_parts(units, base, manifest, plan, out_dir, content)
            done_total += done
        if not units:
            continue
        error = image if isinstance(image, Exception) else None
        target = None
        if error is None:
            target, error = _row_target(src, target_request)
        work.append(Work(len(work), src, None if isinstance(image, Exception) else image, error, target, units, base))
    return work, done_total


def _item_base(plan: Plan, src, units: list[Unit], weights_id: str) -> dict:
    """The key columns of each unit's rows, per method."""
    return {u.method: {"image": src.name, "model": plan.model.name, "weights": plan.model.weights,
                       "weights_sha256": weights_id, "method": u.method, "params": plan.methods[u.method].params(),
                       "target_request": u.target_request} for u in units}


def _detection_work(plan: Plan, batch: range, loaded: list, request: DetectionRequest, weights_id: str,
                    manifest: Manifest, out_dir: Path) -> tuple[list[Work], int]:
    """A detector's calls: each image is run once to find its detections (``request``), then every
    detection is an item of its own — target k of the image's wrapper (``DetectionScores``), target
    request ``<request>#d<k>`` (unique per item, so resume finds it), ``_d<k>`` in its file names.
    The items of one image share one wrapper and are computed together; an image without detections
    is one error row naming ``model.score_threshold``."""
    work, done_total = [], 0
    for i, image in zip(batch, loaded):
        src = plan.images[i]
        error, found = (image, []) if isinstance(image, Exception) else (None, [])
        if error is None:
            try:
                box = box_to_input(request.box, image.size, plan.preprocess) if request.box is not None else None
                wrapper, found = references(plan.model.module, image.x, request, plan.model.class_names, box)
            except Exception as e:  # that image's error row; the others still run
                error = e
        if error is None and not found:
            which = {"detections": "no detection", "class": f"no detection of class {request.cls}",
                     "box": f"no detection of class {request.cls}"}[request.kind]
            error = ConfigError(f"{which} on image {src.name} scores at least model.score_threshold="
                                f"{request.score_threshold}: lower model.score_threshold (a randomly initialised "
                                "detector, model.weights=null, scores each class about 1/91)")
        if error is not None:
            units = units_of(plan, i, request)
            work.append(Work(len(work), src, None if isinstance(image, Exception) else image, error, None, units,
                             _item_base(plan, src, units, weights_id)))
            continue
        for det in found:
            units = units_of(plan, i, det)
            base = _item_base(plan, src, units, weights_id)
            if plan.resume:
                content = {"image_sha256": image.sha256, "weights_sha256": weights_id}
                units, done = missing_parts(units, base, manifest, plan, out_dir, content)
                done_total += done
            if units:
                work.append(Work(len(work), src, image, None, det.index, units, base, wrapper))
    return work, done_total


def _row_target(src, request: Any) -> tuple[Any, Optional[Exception]]:
    """The class an image's items explain (None: its top-1), or why it has none."""
    if request is None:
        return src.default_target, None
    if request == "top1":
        return None, None
    if request == "label":
        if src.default_target is None:
            return None, ConfigError(f"target=label but image {src.name} ({src.origin}) has no label: give it a "
                                     "target (a list's target column, a class subfolder) or use target=null")
        return src.default_target, None
    return request, None


def _compute_work(plan: Plan, work: list[Work]) -> list[dict[str, ItemResult]]:
    """Every item of a batch: the images with the same calls to do are computed together
    (``compute_batch``), then their metrics; failed images get their error."""
    results: list[dict[str, ItemResult]] = [{} for _ in work]
    groups: dict[tuple, list[Work]] = {}
    for item in work:
        if item.error is not None:
            results[item.index] = {u.method: ItemResult.failed(item.error) for u in item.units}
        else:
            groups.setdefault((id(item.model), tuple((u.method, u.layers) for u in item.units)), []).append(item)
    for (_, calls), items in groups.items():
        x = torch.cat([item.image.x for item in items])
        methods = {m: plan.methods[m] for m, _ in calls}
        model = plan.model.module if items[0].model is None else items[0].model
        # a detection's wrapper lives for one image: a folded fast copy (cached per model) would be
        # rebuilt for every image, so detectors run as given
        with precision_scope(plan.device, plan.precision), (nullcontext() if items[0].model is None else exact()):
            out = compute_batch(methods, model, x, [item.target for item in items], dict(calls), seed=plan.seed)
            for m, layers in calls:
                _add_metrics(plan, m, layers, items, out[m], x, model)
        for n, item in enumerate(items):
            results[item.index] = {m: out[m][n] for m, _ in calls}
    return results


def _add_metrics(plan: Plan, method: str, layers: tuple[str, ...], items: list[Work], results: list[ItemResult],
                 x: torch.Tensor, model: Any = None) -> None:
    """Each image's Attributions with the configured metrics (in place in ``results``). The images
    of the batch are measured together, one ``evaluate_rows`` call per attribution position (the
    same layer of every image), so the metrics' perturbed copies share the model's batches."""
    if not plan.metrics:
        return
    ok = [n for n, r in enumerate(results) if r.error is None]
    if not ok:
        return
    measured = {n: list(results[n].attributions) for n in ok}
    for j in range(max(len(measured[n]) for n in ok)):
        rows_at = [n for n in ok if j < len(measured[n])]
        scored = evaluate_rows(plan.metrics, [measured[n][j] for n in rows_at],
                               plan.model.module if model is None else model, x[rows_at],
                               method=plan.methods[method], layers=layers, masks=[items[n].image.mask for n in rows_at])
        for n, attr in zip(rows_at, scored):
            measured[n][j] = attr
    for n in ok:
        results[n] = dataclasses.replace(results[n], attributions=measured[n])


def weights_identity(model) -> str:
    """The sha256 of the weights' file; for weights without a file of their own (timm's hub cache)
    the sha256 of the state dict's bytes; "" for a seeded random init, which its name identifies."""
    if model.weights_sha256:
        return model.weights_sha256
    if str(model.weights).startswith("random("):
        return ""
    h = hashlib.sha256()
    for name, t in model.module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def report_timing(out_dir: Path, planned: int, calls: int, load_s: float, run_s: float, clock: dict) -> None:
    """Where the time went: plan + model load, the techniques' compute, and the rest (images, files,
    manifest, metrics, gallery); ``overhead`` = (load + run) / (load + compute)."""
    timing = {"load_s": load_s, "compute_s": clock["compute"], "gallery_s": clock.get("gallery", 0.0),
              "other_s": run_s - clock["compute"] - clock.get("gallery", 0.0), "wall_s": load_s + run_s}
    timing["overhead"] = timing["wall_s"] / max(load_s + clock["compute"], 1e-9)
    atomic_write(out_dir / "progress.json", json.dumps({"planned_rows": planned, "calls": calls,
                                                        "timing": {k: round(v, 4) for k, v in timing.items()}}).encode())
    log.info("time: %.2f s = load %.2f s + compute %.2f s + files/metrics %.2f s + gallery %.2f s (%.2fx load + compute)",
             timing["wall_s"], load_s, timing["compute_s"], timing["other_s"], timing["gallery_s"], timing["overhead"])


def missing_parts(units: list[Unit], base: dict, manifest: Manifest, plan: Plan, out_dir: Path,
                  content: dict | None) -> tuple[list[Unit], int]:
    """The calls still to do, each narrowed to its unfinished layers, and how many items are done.
    An item is done when its row matches the key, ``content`` (the input's and the weights' sha256;
    None: the image could not be read, nothing is done) and the configured metrics, and its files
    their sha256. A technique whose layers are computed jointly (LayerCAM's fusion) is redone whole."""
    todo, done = [], 0
    wanted = json.loads(metric_record(plan.metrics))

    def has_metrics(row: dict) -> bool:
        """Metrics are not part of an item's key: a row made without (or with other options of) a
        metric now configured is incomplete, and its recompute replaces it."""
        done_with = row.get("metric_params")
        done_with = json.loads(done_with) if isinstance(done_with, str) and done_with else {}
        return all(done_with.get(name) == params for name, params in wanted.items())

    for u in units:
        missing = [l for l in (u.layers or (None,))
                   if content is None or not manifest.completed(base[u.method], l, out_dir, has_metrics, content)]
        done += len(u.layers or (None,)) - len(missing)
        if not missing:
            continue
        joint = getattr(plan.methods[u.method], "fuse", False)
        todo.append(u if joint or not u.layers else dataclasses.replace(u, layers=tuple(missing)))
    return todo, done


def remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files of ``atomic_write`` that a killed run left behind."""
    for tmp in out_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _writers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1), thread_name_prefix="cnnviz-items")


def _log_row(image: str, unit: Unit, row: dict) -> None:
    if row["status"] != "ok":
        log.error("%s / %s failed: %s", image, unit.method, row["error"])
        return
    target = row.get("target")
    if target is None or (isinstance(target, float) and target != target):  # a technique that explains no class
        what = f"no target (predicted {row.get('predicted_name') or row.get('predicted')})"
    else:
        prob = row.get("target_prob")
        value = f"p={prob:.3f}" if prob is not None else f"value={row.get('target_value')}"
        what = f"target {target} ({row.get('target_name')}, {value})"
    log.info("%s %s%s %s: %.0f ms", image, unit.method, f" @ {row['layer']}" if row["layer"] else "", what,
             row["duration_ms"])


def _item_rows(unit: Unit, base: dict, result: ItemResult, image: Optional[LoadedImage], output: RunOutput) -> list[dict]:
    """Write one technique's files; its rows, or its error rows (never raises for the item).
    ``base``: the item's key columns; ``image``: None when the image could not be read (``result``
    then holds that error)."""
    if result.error is None:
        try:
            return _explanation(unit, base, result, image, output.plan).rows(output.out_dir, output.options, output.with_target)
        except Exception as e:  # recorded, logged, and the remaining items still run
            result = ItemResult.failed(e, result.ms)
    error = plain_text(f"{type(result.error).__name__}: {result.error}")
    return [{**base, "layer": layer, "target": unit.target if isinstance(unit.target, int) else None,
             "status": "error", "error": error, "duration_ms": round(result.ms, 1)} for layer in unit.layers or (None,)]


def _explanation(unit: Unit, base: dict, result: ItemResult, image: LoadedImage, plan: Plan) -> Explanation:
    """The Explanation of one computed item, with the run-level columns its rows carry."""
    meta = {"image_sha256": image.sha256, "model": plan.model.name, "weights": plan.model.weights,
            "weights_sha256": base["weights_sha256"], "target_request": unit.target_request,
            "duration_ms": round(result.ms / len(result.attributions), 1)}
    if plan.metrics:
        meta["metric_params"] = metric_record(plan.metrics)
    if isinstance(unit.target, DetectionItem):
        meta["detection"] = unit.target  # its columns, file names and box: cnnviz.output.items
    method = plan.methods[unit.method]
    return Explanation(image.name, image.picture, result.attributions, method.renders, plan.model.class_names, meta,
                       method.writes + writes_of(plan.metrics), original_size=image.size, preprocess=plan.preprocess,
                       warnings=image.warnings, target_kind=unit.target)


def metric_record(metrics: dict) -> str:
    """The ``metric_params`` cell: every configured metric and its options, as JSON."""
    return json.dumps({name: m.params() for name, m in metrics.items()}, sort_keys=True, default=str)


def _write_env(out_dir: Path, plan: Plan) -> None:
    env = environment(str(plan.device), plan.seed, plan.model.weights_sha256)
    atomic_write(out_dir / "env.json", json.dumps(env, indent=2).encode())


def _load(src, plan: Plan) -> LoadedImage | Exception:
    """The image read and preprocessed, or the exception, kept so that every item of the image reports it."""
    try:
        img, sha = src.read()
        x, picture = preprocess(img, plan.preprocess)
        if src.mask is not None:  # the exact object pixels win over a box
            mask = mask_to_input(src.mask(), img.size, plan.preprocess)
        else:
            mask = box_mask(tuple(x.shape[-2:]), box_to_input(src.box, img.size, plan.preprocess)) if src.box else None
        notes = tuple(str(w) for w in (img.info.get("cnnviz_warnings") or ()))
        return LoadedImage(src.name, sha, to_device(x, plan.device), picture, mask, img.size, notes)
    except Exception as e:
        return e


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def plain_text(message: str) -> str:
    """``message`` without terminal escape sequences (colours, cursor moves): some libraries colour
    their errors, and a manifest cell or a log file is not a terminal."""
    return _ANSI.sub("", message)


def run(cfg: DictConfig, out_dir: Path, manifest: Manifest | None = None) -> pd.DataFrame:
    """Check the whole configuration (``ConfigError`` before any work), then compute every item."""
    start = time.perf_counter()
    plan = build_plan(cfg)
    return execute(plan, Path(out_dir), time.perf_counter() - start, manifest)
