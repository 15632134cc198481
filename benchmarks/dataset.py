"""The dataset section (issue 23): cnnviz on a list of images, measured side by side in one run.

    python -m benchmarks --items dataset [--quick] [--dataset-images 256] [--dataset-maps 64]

Four ratios, each with MET / MISSED against ``thresholds.py`` (``dataset_*``):

1. the classic four (``settings.CLASSIC4``: vanilla, guided backprop, Grad-CAM, guided Grad-CAM, the
   set of the benchmark's ``classic4`` row) through the engine on batches of ``batch_size`` images,
   one target per row, against the same engine calls one image at a time: images/s batched over
   images/s looped. ``batch_size`` is the runner's default (conf/config.yaml, else 16).
2. Grad-CAM at the model's default layer on the same batches against pytorch-grad-cam's
   ``GradCAM`` (its batch API: a (B,3,H,W) tensor and one ``ClassifierOutputTarget`` per row) and
   torchcam's ``GradCAM`` (``class_idx`` as a list, one class per row, when it accepts that; else one
   image at a time, and the output says which). Both peers' maps are compared with cnnviz's: Pearson
   r per image at the input's resolution, the worst image printed.
3. deletion + insertion of Grad-CAM maps against Quantus's ``PixelFlipping``. Quantus has no
   insertion metric; pixel flipping in the least-relevant-first order (the map negated) visits the
   same images as insertion in reverse: after j of ``steps`` chunks it keeps the most salient
   ``steps - j`` chunks of the image on the substrate, which is insertion's point ``steps - j``.
   Definitions made equal: one strict pixel order (the map replaced by its rank from
   ``perturbation.ranking``, so neither library breaks ties), ``steps`` dividing H·W (Quantus's
   ``features_in_step`` counts each pixel's channels: 3·H·W/steps; its ``__call__`` checks that number
   against H·W, which no whole-pixel step passes at 224x224, so the benchmark calls
   ``PixelFlipping.evaluate_batch``, the per-batch work ``__call__`` does, on Quantus's own wrapped model), the
   ``black`` substrate (pixel value 0, a constant in the normalised space when mean and std are equal
   across channels: Quantus's ``perturb_baseline`` takes it as a number; its own ``"black"`` is the
   image's minimum, another thing), softmax probability. Quantus's curve lacks the unchanged image
   (deletion's point 0, insertion's last point) and its AUC is the trapezoid rule with dx = 1 on its
   points; so the curves are compared on the points both compute and the AUCs as Quantus defines
   them, computed from cnnviz's curves (cnnviz's own AUC is on [0, 1] with all steps + 1 points).
4. the whole process: ``python run.py`` on the images as a subprocess (``image=list`` when that
   group exists, else ``image=folder``), ``'method=[gradcam,vanilla_backprop]'``; the ratio is the
   runner's own ``overhead`` in progress.json: wall / (model load + compute).

Images per second of the batched classic four are printed per device (cpu; cuda when available).

Timing: 1-3 run chunk by chunk (``batch_size`` images, or maps), each chunk through every contender
in turn, the order rotated every chunk, after one untimed warm-up chunk each: the machine's drift
(other processes on the shared cores) lands on all contenders alike. cnnviz runs with the
accelerations ``python run.py`` uses (``runner_speed``); the peers run their own copy of the model as
given (``harness.fresh``). The images are deterministic crops and flips of four scikit-image photos
(``dataset_images``), each row's target the model's top-1 class on its source photo.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from benchmarks.harness import first_line, fresh, submodule
from benchmarks.settings import CLASSIC4, MODELS, ROOT, load_model
from benchmarks.thresholds import THRESHOLDS

PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")  # bundled with scikit-image: offline
DEFAULT_BATCH = 16  # when conf/config.yaml has no batch_size
RUN_METHODS = "[gradcam,vanilla_backprop]"
CORR_MIN = 0.99  # Grad-CAM maps agree with a peer's: Pearson r per image above this
CURVE_TOL = 1e-4  # |p_cnnviz - p_quantus| per curve point (float32 vs float64 softmax, fast copy's rounding)


@dataclass
class Setup:
    """What one dataset measurement runs on: a model, its default layer and normalisation, the
    normalised images ``x`` (N,3,H,W), one class per image, the batch size, and the accelerations
    cnnviz runs with (None: the library's defaults)."""

    model: nn.Module
    layer: str
    mean: list[float]
    std: list[float]
    x: torch.Tensor
    targets: list[int]
    batch_size: int
    speed: Any = None
    names: list[str] = field(default_factory=list)

    def chunks(self, n: Optional[int] = None) -> list[tuple[int, int]]:
        n = len(self.targets) if n is None else n
        return [(lo, min(lo + self.batch_size, n)) for lo in range(0, n, self.batch_size)]


# ---------------------------------------------------------------- the data

def dataset_images(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` deterministic ``size``x``size`` RGB images (N,H,W,3 uint8): square crops of 50-100 % of
    the shorter side at a seeded position of the scikit-image photos in turn, half of them mirrored."""
    from PIL import Image
    from skimage import data

    photos = [getattr(data, name)() for name in PHOTOS]
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[y0:y0 + side, x0:x0 + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR))
    return out


def image_names(n: int) -> list[str]:
    return [f"{PHOTOS[i % len(PHOTOS)]}_{i:03d}" for i in range(n)]


def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N,H,W,3) -> the normalised float (N,3,H,W) the model takes."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def runner_batch_size(config: Path = ROOT / "conf" / "config.yaml") -> int:
    """The runner's default ``batch_size`` (conf/config.yaml), or 16 where the key is absent."""
    from omegaconf import OmegaConf

    value = OmegaConf.load(config).get("batch_size", None)
    return int(value) if value is not None else DEFAULT_BATCH


def photo_labels(model: nn.Module, mean, std, size: int = 224) -> list[int]:
    """The model's top-1 class on each whole source photo (squashed to ``size``): the images' labels."""
    from PIL import Image
    from skimage import data

    photos = np.stack([np.asarray(Image.fromarray(getattr(data, p)()).resize((size, size), Image.BILINEAR))
                       for p in PHOTOS])
    with torch.no_grad():
        return [int(c) for c in model(to_input(photos, mean, std)).argmax(-1)]


def default_setup(n: int, batch_size: Optional[int] = None, model_name: str = "efficientnet_lite0") -> Setup:
    """The benchmark's setup: the embedded efficientnet_lite0 (as the other sections load it), its
    default layer, ``n`` generated images labelled by their source photo."""
    from benchmarks.suites import runner_speed

    layer, mean, std = MODELS[model_name]
    model = load_model(model_name).eval()
    images = dataset_images(n)
    labels = photo_labels(model, mean, std)
    targets = [labels[i % len(PHOTOS)] for i in range(n)]
    return Setup(model, layer, mean, std, to_input(images, mean, std), targets,
                 batch_size or runner_batch_size(), runner_speed(model_name), image_names(n))


# ---------------------------------------------------------------- timing in turns

def in_turns(chunks: list, contenders: dict[str, Callable[[Any], Any]],
             check: Optional[Callable[[Any, dict], None]] = None, warmup: Any = None) -> dict[str, float]:
    """Seconds per contender over all chunks: one untimed warm-up chunk each (``warmup``, else the
    first chunk), then every chunk through every contender, the order rotated each chunk.
    ``check(chunk, outputs)`` sees the contenders' outputs on each chunk (untimed)."""
    names = list(contenders)
    for name in names:
        contenders[name](chunks[0] if warmup is None else warmup)
    total = dict.fromkeys(names, 0.0)
    for k, chunk in enumerate(chunks):
        outputs = {}
        for name in names[k % len(names):] + names[:k % len(names)]:
            t0 = time.perf_counter()
            outputs[name] = contenders[name](chunk)
            total[name] += time.perf_counter() - t0
        if check is not None:
            check(chunk, outputs)
    return total


def engine_rows(methods: dict, setup: Setup, x: torch.Tensor, targets: list[int], layers: dict) -> dict[str, np.ndarray]:
    """The techniques on one batch through the engine (the runner's call: ``compute_batch`` where it
    exists, else ``compute_group`` with one target per row) -> per technique the (B, ...) maps
    (CAMs: upsampled to the input). A failed technique raises: a benchmark of errors measures nothing."""
    from cnnviz import engine

    if hasattr(engine, "compute_batch"):
        per_row = engine.compute_batch(methods, setup.model, x, targets, layers, speed=setup.speed)
        out = {}
        for name, rows in per_row.items():
            for r in rows:
                if r.error is not None:
                    raise RuntimeError(f"{name}: {first_line(r.error)}") from r.error
            out[name] = np.concatenate([_map_of(r.attributions[0]) for r in rows])
        return out
    target = targets[0] if len(targets) == 1 else list(targets)
    results = engine.compute_group(methods, setup.model, x, target, layers, speed=setup.speed)
    for name, r in results.items():
        if r.error is not None:
            raise RuntimeError(f"{name}: {first_line(r.error)}") from r.error
    return {name: _map_of(r.attributions[0]) for name, r in results.items()}


def _map_of(a) -> np.ndarray:
    return np.asarray(a.upsampled if a.upsampled is not None else a.values)


def cnnviz_methods(names: Sequence[str], setup: Setup) -> tuple[dict, dict]:
    from benchmarks.suites import cnnviz_method

    methods = {n: cnnviz_method(n, setup.mean, setup.std) for n in names}
    return methods, {n: ([setup.layer] if m.needs_layer else []) for n, m in methods.items()}


# ---------------------------------------------------------------- 1. classic four, batched vs one image at a time

def classic4(setup: Setup) -> dict:
    """Seconds for the classic four on every image, batched and one image at a time, and the largest
    difference between the two paths' maps relative to the map's maximum (they must be equal)."""
    methods, layers = cnnviz_methods(CLASSIC4, setup)
    x, t = setup.x, setup.targets

    def batched(c):
        return engine_rows(methods, setup, x[c[0]:c[1]], t[c[0]:c[1]], layers)

    def loop(c):
        rows = [engine_rows(methods, setup, x[i:i + 1], [t[i]], layers) for i in range(*c)]
        return {n: np.concatenate([r[n] for r in rows]) for n in methods}

    worst = [0.0]

    def check(c, out):
        for n in methods:
            a, b = out["batched"][n], out["loop"][n]
            worst[0] = max(worst[0], float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)))

    s = in_turns(setup.chunks(), {"batched": batched, "loop": loop}, check)
    return {"n": len(t), "batch_size": setup.batch_size, "batched_s": s["batched"], "loop_s": s["loop"],
            "max_diff": worst[0]}


def per_device(setup: Setup, cpu_images_per_s: Optional[float]) -> dict[str, float]:
    """Images/s of the batched classic four per device: cpu from ``classic4``'s batched run, cuda (when
    available) measured here on a copy of the model and the images on the GPU."""
    out = {} if cpu_images_per_s is None else {"cpu": cpu_images_per_s}
    if torch.cuda.is_available():
        s = Setup(fresh(setup.model).to("cuda"), setup.layer, setup.mean, setup.std, setup.x.to("cuda"),
                  setup.targets, setup.batch_size, setup.speed)
        methods, layers = cnnviz_methods(CLASSIC4, s)

        def batched(c):
            out = engine_rows(methods, s, s.x[c[0]:c[1]], s.targets[c[0]:c[1]], layers)
            torch.cuda.synchronize()
            return out
        out["cuda"] = len(s.targets) / in_turns(s.chunks(), {"cuda": batched})["cuda"]
    return out


# ---------------------------------------------------------------- 2. Grad-CAM vs pytorch-grad-cam and torchcam

def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two maps; two constant maps agree (r = 1), one constant and one not do not (0)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def torchcam_batches(extractor, model: nn.Module, x: torch.Tensor, targets: list[int]) -> bool:
    """Whether torchcam's extractor takes a batch with one class per row (``class_idx`` a list) and
    returns each row's own map: compared with the same rows one image at a time."""
    try:
        both = extractor(class_idx=list(targets[:2]), scores=model(x[:2]))[0]
    except Exception:
        return False
    alone = torch.cat([extractor(class_idx=int(targets[i]), scores=model(x[i:i + 1]))[0] for i in range(2)])
    return bool(torch.allclose(both, alone, rtol=1e-3, atol=1e-5))


def gradcam_peers(setup: Setup) -> dict:
    """Seconds for Grad-CAM on every image in cnnviz, pytorch-grad-cam and torchcam (each on batches of
    ``batch_size`` with one target per row, maps at the input's resolution), and the worst per-image
    correlation of each peer's maps with cnnviz's."""
    import torch.nn.functional as F
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TCGradCAM

    methods, layers = cnnviz_methods(["gradcam"], setup)
    x, t = setup.x, setup.targets
    size = tuple(x.shape[-2:])
    m_pgc, m_tc = fresh(setup.model), fresh(setup.model)
    corr = {"pytorch-grad-cam": 1.0, "torchcam": 1.0}
    with PGCGradCAM(model=m_pgc, target_layers=[submodule(m_pgc, setup.layer)]) as pgc:
        tc = TCGradCAM(m_tc, target_layer=setup.layer)
        try:
            mode = "batch" if len(t) >= 2 and torchcam_batches(tc, m_tc, x, t) else "loop"

            def ours(c):
                return engine_rows(methods, setup, x[c[0]:c[1]], t[c[0]:c[1]], layers)["gradcam"]

            def pytorch_grad_cam(c):
                return pgc(input_tensor=x[c[0]:c[1]], targets=[ClassifierOutputTarget(int(i)) for i in t[c[0]:c[1]]])

            def torchcam(c):
                if mode == "batch":
                    maps = tc(class_idx=[int(i) for i in t[c[0]:c[1]]], scores=m_tc(x[c[0]:c[1]]))[0]
                else:
                    maps = torch.cat([tc(class_idx=int(t[i]), scores=m_tc(x[i:i + 1]))[0] for i in range(*c)])
                # upsampled like cnnviz's and pytorch-grad-cam's maps
                return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

            def check(c, out):
                a = out["cnnviz"]
                for peer in corr:
                    b = np.asarray(out[peer].detach() if isinstance(out[peer], torch.Tensor) else out[peer])
                    corr[peer] = min([corr[peer]] + [_corr(a[i], b[i]) for i in range(len(a))])

            s = in_turns(setup.chunks(), {"cnnviz": ours, "pytorch-grad-cam": pytorch_grad_cam, "torchcam": torchcam},
                         check)
        finally:
            tc.remove_hooks()
    return {"n": len(t), "cnnviz_s": s["cnnviz"], "pytorch-grad-cam_s": s["pytorch-grad-cam"],
            "torchcam_s": s["torchcam"], "pytorch-grad-cam_corr": corr["pytorch-grad-cam"],
            "torchcam_corr": corr["torchcam"], "torchcam_mode": mode}


def gradcam_maps(setup: Setup, n: Optional[int] = None) -> np.ndarray:
    """cnnviz's upsampled Grad-CAM maps (N,H,W) of the first ``n`` images: the maps the metrics measure."""
    methods, layers = cnnviz_methods(["gradcam"], setup)
    maps = [engine_rows(methods, setup, setup.x[lo:hi], setup.targets[lo:hi], layers)["gradcam"]
            for lo, hi in setup.chunks(n)]
    return np.concatenate(maps).reshape(-1, *setup.x.shape[-2:]).astype(np.float64)


# ---------------------------------------------------------------- 3. deletion + insertion vs Quantus

@contextlib.contextmanager
def numpy_trapz():
    """Quantus 0.6 calls ``np.trapz``, which numpy 2 removed: lend it ``np.trapezoid`` (the same rule)
    in this process only, for the Quantus calls only, and take it back after."""
    lent = not hasattr(np, "trapz")
    if lent:
        np.trapz = np.trapezoid
    try:
        yield
    finally:
        if lent:
            del np.trapz


def strict_order(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each map replaced by its pixels' ranks (most salient: the largest value), ties broken as cnnviz
    breaks them, so that any library sorting the result visits the pixels in cnnviz's order."""
    from cnnviz.metrics.perturbation import ranking

    out = np.empty(maps.shape, dtype=np.float64)
    n = maps[0].size
    for i, m in enumerate(maps):
        flat = np.empty(n)
        flat[ranking(m, seed)] = np.arange(n, 0, -1, dtype=np.float64)
        out[i] = flat.reshape(m.shape)
    return out


def _black(mean, std) -> float:
    values = {round((0.0 - m) / s, 12) for m, s in zip(mean, std)}
    if len(values) != 1:
        raise ValueError(f"pixel 0 is {sorted(values)} per channel in the normalised space; Quantus's perturb_baseline "
                         "takes one number: compare on a model whose mean and std are equal across channels")
    return float(values.pop())


def perturbation_vs_quantus(setup: Setup, maps: np.ndarray, steps: int) -> dict:
    """Seconds for deletion + insertion of ``maps`` (on the first len(maps) images) in cnnviz and in
    Quantus's PixelFlipping (see the module docstring for how the definitions are made equal), the
    largest differences of their curves and AUCs, and which cnnviz path ran (``Metric.batch`` where
    the metrics have it, else one map at a time)."""
    import quantus
    from quantus.helpers.utils import calculate_auc, get_wrapped_model

    from cnnviz.metrics import get_metric
    from cnnviz.metrics.base import Sample
    from cnnviz.speed import applied
    from cnnviz.speed.fastpath import forward_fn

    n_maps, (h, w) = len(maps), setup.x.shape[-2:]
    if (h * w) % steps:
        raise ValueError(f"--dataset-steps {steps} does not divide the {h}x{w} = {h * w} pixels: Quantus's "
                         "features_in_step must divide them; choose a divisor (224x224: 49, 56, 64, ...)")
    order = strict_order(maps)
    black = _black(setup.mean, setup.std)
    metrics = {name: get_metric(name)(steps=steps, substrate="black", input_mean=list(setup.mean),
                                      input_std=list(setup.std)) for name in ("deletion", "insertion")}
    api = "Metric.batch" if all(hasattr(m, "batch") for m in metrics.values()) else "one map at a time"
    x, t = setup.x, setup.targets
    m_q = get_wrapped_model(fresh(setup.model), channel_first=True, softmax=True, device="cpu")
    pf = {name: quantus.PixelFlipping(features_in_step=3 * h * w // steps, perturb_baseline=black, abs=False,
                                      normalise=False, return_auc_per_sample=False, disable_warnings=True,
                                      display_progressbar=False) for name in metrics}

    def ours(c):
        with applied(setup.speed) if setup.speed is not None else contextlib.nullcontext():
            fwd = forward_fn(setup.model, x[:1])[1]
            samples = [Sample(method="gradcam", values=order[i], cam=order[i], x=x[i:i + 1], target=int(t[i]),
                              forward=fwd, model=setup.model) for i in range(*c)]
            out = {}
            for name, metric in metrics.items():
                results = metric.batch(samples) if api == "Metric.batch" else [metric(s) for s in samples]
                for r in results:
                    if getattr(r, "error", None) is not None:
                        raise RuntimeError(f"{name}: {first_line(r.error)}") from r.error
                out[name] = np.stack([r.extras[f"{name}_curve"]["probability"] for r in results])
            return out

    def theirs(c):
        xb, yb = x[c[0]:c[1]].numpy(), np.asarray(t[c[0]:c[1]])
        a = order[c[0]:c[1], None]
        out = {}
        with numpy_trapz():
            for name, sign in (("deletion", 1.0), ("insertion", -1.0)):  # insertion: least relevant first
                # evaluate_batch: what PixelFlipping.__call__ runs on each batch, after a check that asks
                # H*W (not the C*H*W features it perturbs) to be a multiple of features_in_step: with 224 x 224
                # (3 does not divide 224^2) no whole-pixel step passes that check
                curves = np.asarray(pf[name].evaluate_batch(model=m_q, x_batch=xb, y_batch=yb, a_batch=sign * a))
                out[name] = (curves, calculate_auc(curves, batched=True))
        return out

    worst = {"curve": 0.0, "auc": 0.0}

    def check(c, out):
        for name in metrics:
            p = out["cnnviz"][name]
            q, q_auc = out["quantus"][name]
            # Quantus's points: deletion's 1..steps; insertion's steps-1..0 (reversed)
            mine = p[:, 1:] if name == "deletion" else p[:, :-1][:, ::-1]
            worst["curve"] = max(worst["curve"], float(np.abs(mine - q).max()))
            worst["auc"] = max(worst["auc"], float(np.abs(np.trapezoid(mine, dx=1, axis=1) - q_auc).max()))

    chunks = [(lo, min(lo + setup.batch_size, n_maps)) for lo in range(0, n_maps, setup.batch_size)]
    # a short warm-up: each map costs 2 x (steps + 1) forwards in both libraries
    s = in_turns(chunks, {"cnnviz": ours, "quantus": theirs}, check, warmup=(0, min(2, n_maps)))
    return {"n": n_maps, "steps": steps, "cnnviz_s": s["cnnviz"], "quantus_s": s["quantus"],
            "curve_diff": worst["curve"], "auc_diff": worst["auc"], "tol": CURVE_TOL, "api": api}


# ---------------------------------------------------------------- 4. the whole process

def write_list(images: np.ndarray, names: list[str], targets: list[int], folder: Path) -> tuple[Path, Path]:
    """The images as PNGs in ``folder/images`` and a CSV list (path relative to it, target, name)."""
    from PIL import Image

    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "list.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "target", "name"])
        for im, name, target in zip(images, names, targets):
            Image.fromarray(im).save(img_dir / f"{name}.png")
            w.writerow([f"images/{name}.png", int(target), name])
    return img_dir, csv_path


def whole_process(images: np.ndarray, names: list[str], targets: list[int], threads: int) -> dict:
    """``python run.py`` on the images in a fresh process; its progress.json ``timing`` plus how the
    images were given (``image=list`` with the CSV's targets when that group exists, else a folder)."""
    with tempfile.TemporaryDirectory(prefix="cnnviz-dataset-") as tmp:
        img_dir, csv_path = write_list(images, names, targets, Path(tmp))
        if (ROOT / "conf" / "image" / "list.yaml").exists():
            how, image = "image=list (targets from the CSV)", ["image=list", f"image.list.path={csv_path}"]
        else:
            how, image = "image=folder (no per-image targets: top-1)", ["image=folder", f"image.folder.path={img_dir}"]
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "run.py"), *image, f"method={RUN_METHODS}", f"hydra.run.dir={run_dir}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"run.py exited with {done.returncode}: {done.stderr.strip()[-400:]}")
        timing = json.loads((run_dir / "progress.json").read_text())["timing"]
    return {"n": len(names), "how": how, **timing}


# ---------------------------------------------------------------- the section and its lines

def run_dataset(args, log: Callable[[str], None] = print) -> dict:
    """Every part of the section; a part that fails is recorded as its error and the others still run."""
    n = args.dataset_images
    res: dict[str, Any] = {}
    log(f"dataset: {n} images, loading efficientnet_lite0")
    setup = default_setup(n)
    parts = [("classic4", lambda: classic4(setup)),
             ("devices", lambda: per_device(setup, n / res["classic4"]["batched_s"] if "batched_s" in res["classic4"]
                                            else None)),
             ("gradcam", lambda: gradcam_peers(setup)),
             ("perturbation", lambda: perturbation_vs_quantus(setup, gradcam_maps(setup, args.dataset_maps),
                                                              args.dataset_steps)),
             ("process", lambda: whole_process(dataset_images(n), setup.names, setup.targets, args.threads))]
    for key, part in parts:
        t0 = time.perf_counter()
        try:
            res[key] = part()
        except Exception as e:  # a missing peer or a failed part is a line of the report, not a crash
            res[key] = {"error": first_line(e, 200)}
        log(f"dataset: {key} done in {time.perf_counter() - t0:.1f} s")
    res["batch_size"] = setup.batch_size
    return res


def _verdict(ok: bool) -> str:
    return "MET   " if ok else "MISSED"


def target_lines(res: dict) -> list[str]:
    """The section's four ratio lines (MET / MISSED against ``thresholds.py``; ``n/a`` with the reason
    where a part could not run) and the lines that qualify them (indented)."""
    out = []
    c4 = res.get("classic4", {})
    lim = THRESHOLDS["dataset_classic4_x_loop"]
    if "batched_s" in c4:
        v = c4["loop_s"] / c4["batched_s"]
        out.append(f"{_verdict(lim.met(v))} dataset: classic four on {c4['n']} images, batch {c4['batch_size']} >= "
                   f"{lim.limit:g}x the one-image loop (images/s): {v:.2f}x ({c4['n'] / c4['batched_s']:.1f} vs "
                   f"{c4['n'] / c4['loop_s']:.1f} images/s; batched maps equal the loop's to {c4['max_diff']:.1e} of max)")
    else:
        out.append(f"n/a    dataset: classic four batched vs one-image loop: {c4.get('error', 'not run')}")
    dev = res.get("devices", {})
    if dev and "error" not in dev:
        out.append("       images/s, batched classic four per device: " + ", ".join(f"{d} {v:.1f}" for d, v in dev.items())
                   + ("" if "cuda" in dev else " (cuda: not available here)"))
    g = res.get("gradcam", {})
    lim = THRESHOLDS["dataset_gradcam_x_peer"]
    if "cnnviz_s" in g:
        peers = ("pytorch-grad-cam", "torchcam")
        ratios = {p: g[f"{p}_s"] / g["cnnviz_s"] for p in peers}
        out.append(f"{_verdict(all(lim.met(v) for v in ratios.values()))} dataset: Grad-CAM on {g['n']} images >= "
                   f"{lim.limit:g}x each peer: " + ", ".join(f"{ratios[p]:.2f}x {p}" for p in peers))
        mode = "batch, class_idx a list (one class per row)" if g["torchcam_mode"] == "batch" else "one image at a time"
        out.append(f"       pytorch-grad-cam: its batch API (a batch tensor, one ClassifierOutputTarget per row); "
                   f"torchcam: {mode}")
        out.append("       maps agree (worst per-image Pearson r at the input's size, > " f"{CORR_MIN:g}): " + ", ".join(
            f"{p} {g[f'{p}_corr']:.4f} {'AGREE' if g[f'{p}_corr'] > CORR_MIN else 'DISAGREE'}" for p in peers))
    else:
        out.append(f"n/a    dataset: Grad-CAM vs pytorch-grad-cam and torchcam: {g.get('error', 'not run')}")
    p = res.get("perturbation", {})
    lim = THRESHOLDS["dataset_metrics_x_quantus"]
    if "cnnviz_s" in p:
        v = p["quantus_s"] / p["cnnviz_s"]
        out.append(f"{_verdict(lim.met(v))} dataset: deletion + insertion of {p['n']} maps, {p['steps']} steps >= "
                   f"{lim.limit:g}x Quantus PixelFlipping's throughput: {v:.2f}x ({p['n'] / p['cnnviz_s']:.2f} vs "
                   f"{p['n'] / p['quantus_s']:.2f} maps/s; cnnviz path: {p['api']})")
        ok = p["curve_diff"] <= p["tol"] and p["auc_diff"] <= p["tol"] * p["steps"]
        out.append(f"       same numbers ({'EQUAL' if ok else 'DIFFERENT'}): max |diff| of the curves {p['curve_diff']:.1e} "
                   f"(tolerance {p['tol']:g} per point), of Quantus's AUC (trapezoid, dx = 1, on its {p['steps']} points) "
                   f"{p['auc_diff']:.1e} (tolerance {p['tol'] * p['steps']:.1e})")
    else:
        out.append(f"n/a    dataset: deletion + insertion vs Quantus: {p.get('error', 'not run')}")
    w = res.get("process", {})
    lim = THRESHOLDS["dataset_process_overhead"]
    if "overhead" in w:
        out.append(f"{_verdict(lim.met(w['overhead']))} dataset: whole process on {w['n']} images x "
                   f"{RUN_METHODS}: wall <= {lim.limit:g} x (model load + compute): {w['overhead']:.3f} "
                   f"({w['wall_s']:.2f} s / ({w['load_s']:.2f} + {w['compute_s']:.2f}))"
                   + (f"; {w['how']}" if "how" in w else ""))
    else:
        out.append(f"n/a    dataset: whole-process wall time: {w.get('error', 'not run')}")
    return out
