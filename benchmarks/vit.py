"""The vision-transformer section (issue 24): Grad-CAM at every block of a timm ViT from one forward and
one backward, against that floor and against pytorch-grad-cam with its ``reshape_transform`` (one call
per layer, the way its documentation runs several layers as separate maps).

    python -m benchmarks --items vit [--quick]

Model: timm ``vit_base_patch16_224`` (``--quick``: ``vit_small_patch16_224``), seeded random init, one
seeded 1x3x224x224 input, target class ``TARGET``; the layers are ``blocks.0`` .. ``blocks.11``.
cnnviz runs with the runner's accelerations (``runner_speed``; ``--exact``: no fast copy). The rows take
turns (floor, cnnviz, floor, ...) and each ratio divides medians of runs made at the same time.
pytorch-grad-cam's maps are compared with cnnviz's upsampled maps (Pearson r per block, on the blocks
whose map is not all zero: with a class-token head the last block's patch tokens get no gradient).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.harness import first_line, fresh, submodule
from benchmarks.settings import TARGET
from benchmarks.suites import cnnviz_method, runner_speed
from benchmarks.thresholds import THRESHOLDS
from cnnviz.engine import compute
from cnnviz.speed import applied

ARCH, QUICK_ARCH = "vit_base_patch16_224", "vit_small_patch16_224"
#: the lower bound the agreement line prints AGREE above (Pearson r of the upsampled maps)
CORR_MIN = 0.99


def vit_model(arch: str) -> torch.nn.Module:
    from cnnviz.models.loaders import timm_model

    return timm_model(arch, None).module.eval()


def reshape_transform(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's ViT reshape, as its tutorial writes it: drop the prefix tokens, (B, h, w, C) -> (B, C, h, w)."""
    prefix = int(model.num_prefix_tokens)
    h, w = model.patch_embed.grid_size

    def transform(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    return transform


def peer_maps(model: torch.nn.Module, blocks: list[str], x: torch.Tensor) -> list[np.ndarray]:
    """pytorch-grad-cam GradCAM, one call per block, on its own copy of the model; (1, H, W) maps each."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m = fresh(model)
    out = []
    for name in blocks:
        with GradCAM(model=m, target_layers=[submodule(m, name)], reshape_transform=reshape_transform(m)) as cam:
            out.append(cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(TARGET)]))
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def run_vit(args, log: Callable[[str], None] = print) -> dict:
    arch = QUICK_ARCH if args.quick else ARCH
    log(f"vit: loading {arch} (random init)")
    model = vit_model(arch)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    blocks = [f"blocks.{i}" for i in range(len(model.blocks))]
    method = cnnviz_method("gradcam", None, None)
    res: dict[str, Any] = {"arch": arch, "blocks": len(blocks)}

    def floor():
        xi = x.clone().requires_grad_(True)
        return torch.autograd.grad(model(xi)[0, TARGET], xi)[0]

    def ours():
        return compute(method, model, x, TARGET, blocks)

    try:
        with applied(runner_speed("timm", fast_copy=not args.exact)):
            ours(), floor()  # warm-up (and the fast copy built)
            pairs = [(_timed(floor), _timed(ours)) for _ in range(max(args.repeats, 2))]
            res["floor_ms"] = statistics.median(p[0] for p in pairs)
            res["cnnviz_ms"] = statistics.median(p[1] for p in pairs)
            attrs = ours()
        log(f"vit: floor {res['floor_ms']:.0f} ms, cnnviz {len(blocks)} blocks {res['cnnviz_ms']:.0f} ms")
    except Exception as e:  # a failure is a line of the report, not a crash
        res["error"] = first_line(e, 200)
        return res
    try:
        t0 = time.perf_counter()
        theirs = peer_maps(model, blocks, x)
        res["peer_ms"] = (time.perf_counter() - t0) * 1000.0
        res["floor_after_ms"] = statistics.median(_timed(floor) for _ in range(2))
        corr = [pearson(a.upsampled[0], t[0]) for a, t in zip(attrs, theirs) if a.upsampled.any()]
        res["corr_min"], res["corr_blocks"] = min(corr), len(corr)
        log(f"vit: pytorch-grad-cam {len(blocks)} calls {res['peer_ms']:.0f} ms; worst r {res['corr_min']:.4f}")
    except Exception as e:
        res["peer_error"] = first_line(e, 200)
    return res


def _verdict(ok: bool) -> str:
    return "MET   " if ok else "MISSED"


def target_lines(res: dict) -> list[str]:
    """The section's target lines (MET / MISSED against ``thresholds.py``) and what qualifies them."""
    if "error" in res:
        return [f"n/a    vit: Grad-CAM at every block: {res['error']}"]
    n, arch = res["blocks"], res["arch"]
    lim = THRESHOLDS["vit_blocks_x_floor"]
    v = res["cnnviz_ms"] / res["floor_ms"]
    out = [f"{_verdict(lim.met(v))} vit: Grad-CAM at all {n} blocks of {arch}, one compute <= {lim.limit:g}x one "
           f"forward + backward: {v:.2f}x ({res['cnnviz_ms']:.0f} ms vs {res['floor_ms']:.0f} ms)"]
    if "peer_ms" in res:
        lim = THRESHOLDS["vit_blocks_x_loop"]
        floor = statistics.median([res["floor_ms"], res["floor_after_ms"]])
        v = res["peer_ms"] / res["cnnviz_ms"]
        out.append(f"{_verdict(lim.met(v))} vit: pytorch-grad-cam GradCAM with reshape_transform, one call per block, "
                   f">= {lim.limit:g}x cnnviz's time: {v:.1f}x ({res['peer_ms']:.0f} ms = {res['peer_ms'] / floor:.1f}x "
                   "the floor)")
        agree = "AGREE" if res["corr_min"] > CORR_MIN else "DISAGREE"
        out.append(f"       maps agree (worst Pearson r of the upsampled maps over the {res['corr_blocks']} blocks with "
                   f"a non-zero map, > {CORR_MIN:g}): {res['corr_min']:.5f} {agree}")
    else:
        out.append(f"n/a    vit: pytorch-grad-cam: {res.get('peer_error', 'not run')}")
    return out
