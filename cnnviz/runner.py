"""Run a plan: every image x method x layer x target, each written as files plus a manifest row."""
from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from . import render
from .attribution import Attribution
from .envinfo import environment
from .files import atomic_write, npy_bytes, png_bytes
from .imaging import preprocess
from .manifest import Manifest
from .plan import Plan, build_plan

log = logging.getLogger("cnnviz")


@dataclass(frozen=True)
class Unit:
    """One call of a technique: an image, a target, and every layer it serves in that call."""

    image: int
    method: str
    layers: tuple[str, ...]
    target: Any


def units_of(plan: Plan) -> list[Unit]:
    return [
        Unit(i, m, tuple(plan.layers[m]), target)
        for i, m, target in itertools.product(range(len(plan.images)), plan.methods, plan.targets)
    ]


def stem(image: str, method: str, layer: Optional[str], target: Optional[int], multi_target: bool) -> str:
    parts = [image, method] + ([layer] if layer else []) + ([f"t{target}"] if multi_target else [])
    return "_".join(parts)


def write_files(attr: Attribution, picture: np.ndarray, name: str, out_dir: Path, renders, options) -> dict[str, Any]:
    """PNG per render kind and the raw arrays; returns ``file_<kind>`` / ``sha256_<kind>`` columns."""
    cols: dict[str, Any] = {}

    def put(kind: str, filename: str, data: bytes) -> None:
        cols[f"file_{kind}"] = filename
        cols[f"sha256_{kind}"] = atomic_write(out_dir / filename, data)

    values = attr.values[0]
    cam = attr.upsampled[0] if attr.upsampled is not None else None
    for kind in renders:
        put(kind, f"{name}_{kind}.png", png_bytes(render.RENDERERS[kind](values, cam, picture, options)))
    put("npy", f"{name}.npy", npy_bytes(values))
    if cam is not None:
        put("npy_upsampled", f"{name}_upsampled.npy", npy_bytes(cam))
    return cols


def prediction_columns(attr: Attribution, plan: Plan) -> dict[str, Any]:
    probs = attr.probabilities[0]
    pred = int(probs.argmax())
    target = attr.target[0] if attr.target else None
    return {
        "target": target,
        "target_name": plan.model.class_name(target),
        "predicted": pred,
        "predicted_name": plan.model.class_name(pred),
        "predicted_prob": float(probs[pred]),
        "target_prob": float(probs[target]) if target is not None else None,
    }


def execute(plan: Plan, out_dir: Path) -> pd.DataFrame:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(str(plan.device), plan.seed, plan.model.weights_sha256)
    atomic_write(out_dir / "env.json", json.dumps(env, indent=2).encode())
    manifest = Manifest(out_dir / "manifest.csv")
    units = units_of(plan)
    multi_target = len(plan.targets) > 1
    loaded: dict[int, Any] = {}
    log.info("%d calls: %d image(s) x %d method(s) x %d target(s), model %s",
             len(units), len(plan.images), len(plan.methods), len(plan.targets), plan.model.name)
    for unit in tqdm(units, desc="cnnviz", unit="call", disable=None):
        src = plan.images[unit.image]
        method = plan.methods[unit.method]
        base = {"image": src.name, "model": plan.model.name, "weights": plan.model.weights,
                "method": unit.method, "params": method.params()}
        start = time.perf_counter()
        try:
            if unit.image not in loaded:
                loaded = {unit.image: _load(src, plan)}  # one image in memory at a time
            if isinstance(loaded[unit.image], Exception):
                raise loaded[unit.image]
            sha, x, picture = loaded[unit.image]
            base["image_sha256"] = sha
            target = src.default_target if unit.target is None else unit.target
            target = None if target == "top1" else target
            torch.manual_seed(plan.seed)
            if unit.layers:
                attrs = method.attribute_layers(plan.model.module, x, target, list(unit.layers))
            else:
                attrs = [method(plan.model.module, x, target)]
            share = (time.perf_counter() - start) * 1000.0 / len(attrs)
            for attr in attrs:
                row = {**base, "layer": attr.layer, **prediction_columns(attr, plan)}
                name = stem(src.name, unit.method, attr.layer, row["target"], multi_target)
                row.update(write_files(attr, picture, name, out_dir, method.renders, plan.render))
                row.update(attr.metrics)
                row.update(status="ok", error="", warnings="; ".join(attr.warnings),
                           duration_ms=round(share, 1), layers_in_call=len(attrs))
                manifest.add(row)
                log.info("%s %s%s target %s (%s, p=%.3f): %.0f ms", src.name, unit.method,
                         f" @ {attr.layer}" if attr.layer else "", row["target"], row["target_name"],
                         row["target_prob"] if row["target_prob"] is not None else float("nan"), share)
        except Exception as e:  # recorded, logged, and the remaining calls still run
            error = f"{type(e).__name__}: {e}"
            log.error("%s / %s failed: %s", src.name, unit.method, error)
            duration = round((time.perf_counter() - start) * 1000.0, 1)
            for layer in unit.layers or (None,):
                manifest.add({**base, "layer": layer, "target": unit.target if isinstance(unit.target, int) else None,
                              "status": "error", "error": error, "duration_ms": duration})
    frame = manifest.frame()
    failed = int((frame["status"] == "error").sum())
    log.info("done: %d ok, %d failed; outputs in %s", len(frame) - failed, failed, out_dir)
    return frame


def _load(src, plan: Plan):
    """(sha256, input, picture), or the exception, kept so that every item of the image reports it."""
    try:
        img, sha = src.read()
        x, picture = preprocess(img, plan.preprocess)
        return sha, x.to(plan.device), picture
    except Exception as e:
        return e


def run(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    """Check the whole configuration (``ConfigError`` before any work), then compute every item."""
    return execute(build_plan(cfg), Path(out_dir))
