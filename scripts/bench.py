"""Time cnnviz next to captum, pytorch-grad-cam and torchcam, side by side in one run.

    python scripts/bench.py [--quick] [--models efficientnet_lite0 vgg19] [--repeats 5] [--threads 2]
                            [--items cams gradients classic4 layers16 ablation scorecam ig smoothgrad occlusion]

Models: efficientnet_lite0 (embedded weights, layer bn2, mean = std = 0.5) and vgg19 (random
weights, layer features.35, ImageNet statistics); one 1x3x224x224 input (seeded), target class 243.

Prints ONE table: model, technique, library, median ms, ratio to the floor (one forward plus one
backward of the target logit down to the input, on the same model, in the same run), ratio to the
best peer at equal settings (cnnviz rows only: < 1 means cnnviz is faster), peak RSS so far; then
the agreement checks (integrated gradients, SmoothGrad, occlusion against captum) and the target
ratios with MET / MISSED.

Timing: every item runs once untimed (warm-up), then ``--repeats`` timed runs (slow items: one);
an item whose first run takes over 5 s is not warmed up: that first run is its (only or first)
timed run, and the table says "cold". IG, SmoothGrad and occlusion then run cnnviz and captum's
fastest setting ``--slow-repeats`` more times as back-to-back pairs (order swapped every pair); their
ratio to captum is the median of the pairs' ratios, so the machine's drift between rows (15-40 % on
this shared 2-vCPU machine) cancels within each pair. Peers get a fresh ``copy.deepcopy`` of the model each (made
outside the timed region) and their hooks are always released. ``--quick``: 2 repeats, generic rows
on efficientnet_lite0 only, plus the vgg19-only rows (16-layer Grad-CAM, cnnviz's Ablation-CAM), captum
at cnnviz's batch only (IG internal_batch_size 10, NoiseTunnel 10, Occlusion perturbations_per_eval 16;
the full run tries None/10/25, None/10/25 and 1/16/64), no torchcam ScoreCAM and no pytorch-grad-cam
AblationCAM (512 channels x a full vgg19 forward: 2.4 of the 5 minutes a quick run took with it); about
2.5 minutes on 2 cores.
The full run takes about 45 minutes on 2 cores (vgg19 occlusion: 729-784 vgg19 forwards per
library and batch setting).
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-/Ablation-CAM print tqdm bars

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cnnviz import get_method
from cnnviz.speed import fastpath
from cnnviz.speed import memory
from cnnviz.speed import streams  # noqa: E402
from cnnviz.api import compute, compute_group  # noqa: E402
from cnnviz.models.loaders import efficientnet_lite0, torchvision_model  # noqa: E402

TARGET = 243
COLD_S = 5.0  # items whose first run is longer than this are not warmed up
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
MODELS = {  # name -> loader, default layer, mean, std
    "efficientnet_lite0": (lambda: efficientnet_lite0().module, "bn2", [0.5] * 3, [0.5] * 3),
    "vgg19": (lambda: torchvision_model("vgg19", None).module, "features.35", *IMAGENET),
}
GRADIENT_CAMS = {  # cnnviz name -> (pytorch-grad-cam class, torchcam class or None)
    "gradcam": ("GradCAM", "GradCAM"),
    "gradcam_plusplus": ("GradCAMPlusPlus", "GradCAMpp"),
    "xgradcam": ("XGradCAM", "XGradCAM"),
    "hirescam": ("HiResCAM", None),
    "layercam": ("LayerCAM", "LayerCAM"),
}
GRADIENTS = {  # cnnviz name -> captum class
    "vanilla_backprop": "Saliency",
    "guided_backprop": "GuidedBackprop",
    "deconvnet": "Deconvolution",
    "grad_times_image": "InputXGradient",
}
ITEMS = ("cams", "gradients", "classic4", "layers16", "ablation", "scorecam", "ig", "smoothgrad", "occlusion", "gallery")
SG_SAMPLES, SG_NOISE = 50, 0.15
IG_STEPS = 50
OCC_WINDOW, OCC_STRIDE = 15, 8
# agreement with captum: |a - b| <= ATOL_REL * max|b| + RTOL * |b| elementwise (np.allclose)
RTOL, ATOL_REL = 1e-3, 1e-4
SG_MIN_CORR = 0.9
SG_SAME_FRAC, SG_SCALE_TOL = 0.8, 0.1  # SmoothGrad: two estimates of one expectation


@dataclass
class Row:
    model: str
    technique: str
    library: str
    group: str  # rows of one model with the same group are compared (cnnviz vs peers)
    ms: Optional[float] = None
    runs: int = 0
    cold: bool = False
    error: str = ""
    note: str = ""
    rss_mb: float = 0.0
    times: tuple = ()
    floor_times: tuple = ()  # the floor run right after each timed run (interleaved), when paired
    pair_ratios: tuple = ()  # cnnviz rows of slow items: this run / the best peer's run beside it (rematch)
    pair_peer: Optional[Row] = field(default=None, repr=False)  # that peer
    make: Optional[Callable] = field(default=None, repr=False)  # to time it again (rematch)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def fresh(model: nn.Module, relu_inplace_off: bool = False) -> nn.Module:
    """A private copy for one peer (its hooks and any rewrites stay on the copy)."""
    m = copy.deepcopy(model).eval()
    if relu_inplace_off:
        for mod in m.modules():
            if isinstance(mod, (nn.ReLU, nn.ReLU6)):
                mod.inplace = False
    return m


def submodule(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def as_array(out: Any) -> np.ndarray:
    if isinstance(out, (list, tuple)):
        out = out[0]
    if hasattr(out, "values") and not isinstance(out, torch.Tensor):  # a cnnviz Attribution
        out = out.values
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float64)


def first_line(e: BaseException, n: int = 70) -> str:
    msg = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {msg}"[:n]


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows: list[Row] = []
        self.outputs: dict[tuple[str, str], list] = {}  # (model, key) -> first [and last] result, for the agreement checks
        self.start = time.perf_counter()
        self.floors: dict[str, Callable[[], Callable[[], Any]]] = {}  # model -> its floor, for paired rows

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    def measure(self, model: str, technique: str, library: str, group: str, make: Callable[[], Callable[[], Any]],
                slow: bool = False, note: str = "", keep: Optional[str] = None) -> Row:
        """``make()`` (untimed: model copies, method objects) returns the function to time."""
        row = Row(model, technique, library, group, note=note, make=make)
        fn = None
        try:
            fn = make()
            t0 = time.perf_counter()
            out = fn()
            first = (time.perf_counter() - t0) * 1000.0
            first_out = out if keep else None
            times = []
            if first > COLD_S * 1000.0:
                times.append(first)
                row.cold = True
            n = 1 if slow else self.args.repeats
            # a fast row takes turns with its model's floor, so that both see the machine at the same speed
            floor = self.floors[model]() if not slow and group != "floor" and model in self.floors else None
            if floor is not None:
                floor()
            floor_times = []
            while len(times) < n:
                t0 = time.perf_counter()
                out = fn()
                times.append((time.perf_counter() - t0) * 1000.0)
                if floor is not None:
                    t0 = time.perf_counter()
                    floor()
                    floor_times.append((time.perf_counter() - t0) * 1000.0)
            row.ms, row.runs, row.times = statistics.median(times), len(times), tuple(times)
            row.floor_times = tuple(floor_times)
            if keep:  # the first and the last call's results (two noise draws for captum's NoiseTunnel)
                self.outputs[(model, keep)] = [first_out] + ([out] if out is not first_out else [])
            out = first_out = None
        except Exception as e:  # a peer (or cnnviz) failing is a table entry, not a crash
            row.error = "error: " + first_line(e)
        finally:
            fn = None
            gc.collect()
        row.rss_mb = peak_rss_mb()
        self.rows.append(row)
        shown = f"{row.ms:.1f} ms" if row.ms is not None else row.error
        self.log(f"{model:<18} {technique:<34} {library:<16} {shown}")
        return row

    def rematch(self, model: str, group: str) -> None:
        """Slow items run once each, at different moments; then cnnviz and the fastest peer of the group
        run again ``--slow-repeats`` times as adjacent pairs, the order swapped every round (cnnviz first,
        then the peer first, ...). Each pair gives one ratio measured at one speed of the machine."""
        ours = next((r for r in self.rows if r.model == model and r.group == group and r.library == "cnnviz"
                     and r.ms is not None), None)
        peer = best_peer(self.rows, ours) if ours else None
        if peer is None:
            return
        for i in range(self.args.slow_repeats):
            pair = {}
            for row in (ours, peer) if i % 2 == 0 else (peer, ours):
                fn = row.make()
                t0 = time.perf_counter()
                fn()
                pair[row.library] = (time.perf_counter() - t0) * 1000.0
                row.times = row.times + (pair[row.library],)
                fn = None
                gc.collect()
                row.ms, row.runs = statistics.median(row.times), len(row.times)
                self.log(f"{model:<18} {row.technique:<34} {row.library:<16} again: {row.times[-1]:.1f} ms")
            ours.pair_ratios, ours.pair_peer = ours.pair_ratios + (pair[ours.library] / pair[peer.library],), peer


def cnnviz_method(name: str, mean, std, **params):
    cls = get_method(name)
    fields = set(getattr(cls, "__dataclass_fields__", {}))
    extra = {k: v for k, v in (("input_mean", mean), ("input_std", std)) if k in fields and k not in params}
    return cls(**params, **extra)


def cnnviz_call(method, model, x, layers):
    def run():
        return compute(method, model, x, TARGET, layers)
    return run


def exact(fn):
    """``fn`` run on the model as given, without cnnviz's fast copy (``fast_copy=false``)."""
    def run():
        with fastpath.exact():
            return fn()
    return run


def preset_streams(model: str) -> int:
    """``model.streams`` of the model's preset (conf/model/<name>.yaml): what ``python run.py`` runs with."""
    from omegaconf import OmegaConf

    from cnnviz.app.schema import ModelConfig

    return int(OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml").get("streams", ModelConfig.streams))


def in_streams(model: str) -> str:
    """What a row label adds where the model runs streams."""
    return f", {streams_used(model)}" if preset_streams(model) > 1 else ""


def one_thread(fn):
    """``fn`` run with one intra-op thread: the arithmetic of each cnnviz stream where the preset asks for
    two (``cnnviz.speed.streams``); oneDNN's convolutions round differently with one thread than with two."""
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def convolutions_alone(model: nn.Module, x: torch.Tensor, batch: int, batches: int):
    """Only the convolutions of ``batches`` forward + input-gradient passes at ``batch`` images, on the
    module cnnviz runs (the fast copy where it is used), with the inputs and output gradients recorded
    once, in one stream (all intra-op threads on each convolution): a lower bound on any one-stream
    implementation of 50-point IG / SmoothGrad built on these kernels (cnnviz runs ``model.streams``)."""
    def make():
        net, fx = fastpath.fast_model(model, x)
        fmt = torch.channels_last if net is not model else torch.contiguous_format
        seen = []
        hooks = [m.register_forward_pre_hook(lambda m, i: seen.append((m, i[0].detach())))
                 for m in net.modules() if isinstance(m, nn.Conv2d)]
        try:
            with torch.no_grad():
                net(fx.expand(batch, -1, -1, -1).contiguous(memory_format=fmt))
        finally:
            for h in hooks:
                h.remove()
        calls = []
        for m, xin in seen:
            w = m.weight.detach()
            out = torch.nn.functional.conv2d(xin, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
            calls.append((m, xin, w, torch.randn_like(out).contiguous(memory_format=fmt)))

        def run():
            with torch.no_grad():
                for _ in range(batches):
                    for m, xin, w, g in calls:
                        torch.nn.functional.conv2d(xin, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
                    for m, xin, w, g in reversed(calls):
                        torch.ops.aten.convolution_backward(g, xin, w, None, list(m.stride), list(m.padding),
                                                            list(m.dilation), False, [0, 0], m.groups,
                                                            [True, False, False])
        return run
    return make


# ---------------------------------------------------------------- peers

def gradcam_lib(cls_name: str, model: nn.Module, layers: list[str], x: torch.Tensor, one_call_per_layer=False, **kw):
    """pytorch-grad-cam: ``with Cls(model, target_layers) as cam: cam(x, targets)`` (hooks released on exit)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, cls_name)
    m = fresh(model)
    mods = [submodule(m, name) for name in layers]
    targets = [ClassifierOutputTarget(TARGET)]
    x = x.clone()

    def run():
        out = []
        for group in ([[mod] for mod in mods] if one_call_per_layer else [mods]):
            with cls(model=m, target_layers=group, **kw) as cam:
                out.append(cam(input_tensor=x, targets=targets))
        return out
    return run


def torchcam_lib(cls_name: str, model: nn.Module, layers: list[str], x: torch.Tensor):
    """torchcam: extractor on the copy, forward, extractor(class_idx, scores), remove_hooks()."""
    from torchcam import methods as tcm

    cls = getattr(tcm, cls_name)
    m = fresh(model)
    x = x.clone()
    target_layer = layers[0] if len(layers) == 1 else list(layers)

    def run():
        extractor = cls(m, target_layer=target_layer)
        try:
            if cls_name == "ScoreCAM":
                with torch.inference_mode():
                    m(x)
                return extractor(class_idx=TARGET)
            scores = m(x)
            return extractor(class_idx=TARGET, scores=scores)
        finally:
            extractor.remove_hooks()
    return run


def captum_layer_gradcam(model: nn.Module, layer: str, x: torch.Tensor):
    from captum.attr import LayerAttribution, LayerGradCam

    m = fresh(model, relu_inplace_off=True)
    mod = submodule(m, layer)
    x = x.clone()

    def run():  # upsampled like the cnnviz / pytorch-grad-cam maps
        a = LayerGradCam(m, mod).attribute(x, target=TARGET, relu_attributions=True)
        return LayerAttribution.interpolate(a, tuple(x.shape[-2:]), "bilinear")
    return run


def captum_attr(cls_name: str, model: nn.Module, x: torch.Tensor, **kw):
    import captum.attr as ca

    cls = getattr(ca, cls_name)
    m = fresh(model, relu_inplace_off=True)  # GuidedBackprop / Deconvolution need inplace=False ReLUs
    x = x.clone()

    def run():
        return cls(m).attribute(x, target=TARGET, **kw)
    return run


def captum_noise_tunnel(model: nn.Module, x: torch.Tensor, batch: Optional[int]):
    from captum.attr import NoiseTunnel, Saliency

    m = fresh(model, relu_inplace_off=True)
    x = x.clone()
    stdev = SG_NOISE * float(x.max() - x.min())

    def run():
        return NoiseTunnel(Saliency(m)).attribute(x, nt_type="smoothgrad", nt_samples=SG_SAMPLES,
                                                  nt_samples_batch_size=batch, stdevs=stdev, target=TARGET, abs=False)
    return run


def captum_noise_tunnel_given_draws(model: nn.Module, x: torch.Tensor, seed: int = 0):
    """captum's NoiseTunnel(Saliency) at batch 10 with its noise taken from cnnviz's stream (one
    ``randn`` per sample from a generator seeded with ``seed``) in place of ``torch.normal``: the same
    estimator on the same draws, so the two results can be compared elementwise."""
    from unittest import mock

    run = captum_noise_tunnel(model, x, 10)

    def run_given_draws():
        g = torch.Generator().manual_seed(seed)

        def draws(mean, std, *args, **kwargs):
            z = torch.cat([torch.randn((1, *std.shape[1:]), generator=g, dtype=std.dtype) for _ in range(std.shape[0])])
            return mean + std * z

        with mock.patch.object(torch, "normal", draws):
            return run()
    return run_given_draws


def captum_classic4(model: nn.Module, layer: str, x: torch.Tensor):
    """captum's four calls for vanilla, guided, Grad-CAM (upsampled) and guided Grad-CAM."""
    from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam, Saliency

    m = fresh(model, relu_inplace_off=True)
    mod = submodule(m, layer)
    x = x.clone()

    def run():
        sal = Saliency(m).attribute(x, target=TARGET, abs=False)
        gbp = GuidedBackprop(m).attribute(x, target=TARGET)
        cam = LayerAttribution.interpolate(
            LayerGradCam(m, mod).attribute(x, target=TARGET, relu_attributions=True), tuple(x.shape[-2:]), "bilinear")
        ggc = GuidedGradCam(m, mod).attribute(x, target=TARGET, interpolate_mode="bilinear")
        return sal, gbp, cam, ggc
    return run


def varying_channels(model: nn.Module, layer: str, x: torch.Tensor) -> str:
    """How many channels of the layer are not constant on x (cnnviz scorecam skips constant ones)."""
    seen = {}
    handle = submodule(model, layer).register_forward_hook(lambda mod, i, o: seen.setdefault("a", o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    a = seen["a"][0].flatten(1)
    return f"{int((a.amax(1) > a.amin(1)).sum())}/{a.shape[0]} channels vary"


# ---------------------------------------------------------------- the items

def run_model(b: Bench, name: str, generic: bool, specific: bool) -> None:
    b.log(f"loading {name}")
    model = MODELS[name][0]().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def floor_fn():
        def run():
            xi = x.clone().requires_grad_(True)
            return torch.autograd.grad(model(xi)[0, TARGET], xi)[0]
        return run

    b.measure(name, "floor (fwd+bwd to input)", "torch", "floor", floor_fn)
    b.floors[name] = floor_fn
    try:
        with streams.using(preset_streams(name)):  # as run.py would with model=<name>
            run_items(b, name, model, x, generic, specific)
    finally:
        del b.floors[name]
    # again at the end: the machine's speed drifts (other processes), the ratios use both
    b.measure(name, "floor again, after the rows above", "torch", "floor", floor_fn)
    model = None
    gc.collect()


def run_items(b: Bench, name: str, model: nn.Module, x: torch.Tensor, generic: bool, specific: bool) -> None:
    args = b.args
    items = set(args.items)
    _, layer, mean, std = MODELS[name]
    L = [layer]

    if generic and "cams" in items:
        for cam, (gc_cls, tc_cls) in GRADIENT_CAMS.items():
            b.measure(name, f"{cam} @{layer}", "cnnviz", cam,
                      lambda cam=cam: cnnviz_call(cnnviz_method(cam, mean, std), model, x, L))
            b.measure(name, f"{gc_cls} @{layer}", "pytorch-grad-cam", cam,
                      lambda gc_cls=gc_cls: gradcam_lib(gc_cls, model, L, x))
            if tc_cls:
                b.measure(name, f"{tc_cls} @{layer}", "torchcam", cam, lambda tc_cls=tc_cls: torchcam_lib(tc_cls, model, L, x))
            if cam == "gradcam":
                b.measure(name, f"LayerGradCam @{layer}", "captum", cam, lambda: captum_layer_gradcam(model, layer, x))

    if generic and "gradients" in items:
        for meth, cp_cls in GRADIENTS.items():
            b.measure(name, meth, "cnnviz", meth, lambda meth=meth: cnnviz_call(cnnviz_method(meth, mean, std), model, x, []))
            kw = {"abs": False} if cp_cls == "Saliency" else {}
            b.measure(name, cp_cls + (" (abs=False)" if kw else ""), "captum", meth,
                      lambda cp_cls=cp_cls, kw=kw: captum_attr(cp_cls, model, x, **kw))

    if generic and "classic4" in items:
        names = ("vanilla_backprop", "guided_backprop", "gradcam", "guided_gradcam")

        def group_fn():
            methods = {n: cnnviz_method(n, mean, std) for n in names}
            layers = {n: (L if methods[n].needs_layer else []) for n in names}

            def run():
                out = compute_group(methods, model, x, TARGET, layers)
                for n, (res, _) in out.items():
                    if isinstance(res, Exception):
                        raise RuntimeError(f"{n}: {first_line(res)}")
                return out
            return run

        def separate_fn():
            methods = {n: cnnviz_method(n, mean, std) for n in names}

            def run():
                return [compute(m, model, x, TARGET, L if m.needs_layer else []) for m in methods.values()]
            return run

        b.measure(name, f"classic four, compute_group @{layer}", "cnnviz", "classic4", group_fn)
        b.measure(name, f"classic four, 4 separate calls (sum) @{layer}", "cnnviz", "classic4", separate_fn,
                  note="reference")
        b.measure(name, f"classic four, 4 calls (sum) @{layer}", "captum", "classic4",
                  lambda: captum_classic4(model, layer, x))

    if specific and name == "vgg19" and "layers16" in items:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 16, convs
        b.measure(name, "gradcam @16 convs, one compute", "cnnviz", "layers16",
                  lambda: cnnviz_call(cnnviz_method("gradcam", mean, std), model, x, convs))
        b.measure(name, "GradCAM @16 convs, one call per layer", "pytorch-grad-cam", "layers16",
                  lambda: gradcam_lib("GradCAM", model, convs, x, one_call_per_layer=True), slow=True)
        b.measure(name, "GradCAM @16 convs, one extractor", "torchcam", "layers16",
                  lambda: torchcam_lib("GradCAM", model, convs, x))

    if specific and name == "vgg19" and "ablation" in items:
        b.measure(name, f"ablationcam @{layer}", "cnnviz", "ablationcam",
                  lambda: cnnviz_call(cnnviz_method("ablationcam", mean, std), model, x, L), slow=True)
        if not args.quick:  # about 2.5 minutes, half of a quick run's budget
            b.measure(name, f"AblationCAM @{layer} (batch 32)", "pytorch-grad-cam", "ablationcam",
                      lambda: gradcam_lib("AblationCAM", model, L, x), slow=True)

    if specific and name == "efficientnet_lite0" and "scorecam" in items:
        sl = args.scorecam_layer or layer
        b.measure(name, f"scorecam @{sl} (batch 16)", "cnnviz", "scorecam",
                  lambda: cnnviz_call(cnnviz_method("scorecam", mean, std), model, x, [sl]), slow=True,
                  note=varying_channels(model, sl, x))
        b.measure(name, f"ScoreCAM @{sl} (batch 16)", "pytorch-grad-cam", "scorecam",
                  lambda: gradcam_lib("ScoreCAM", model, [sl], x), slow=True)
        if not args.quick or args.scorecam_layer:
            b.measure(name, f"ScoreCAM @{sl} (batch 32)", "torchcam", "scorecam",
                      lambda: torchcam_lib("ScoreCAM", model, [sl], x), slow=True)

    if generic and "ig" in items:
        def ig_ours():
            return cnnviz_call(cnnviz_method("integrated_gradients", mean, std, n_steps=IG_STEPS, method="gausslegendre",
                                             baseline="zero", internal_batch_size=10), model, x, [])

        def ig_captum(net, xin, ibs=10):
            return captum_attr("IntegratedGradients", net, xin, n_steps=IG_STEPS, method="gausslegendre",
                               internal_batch_size=ibs)

        b.measure(name, f"integrated_gradients {IG_STEPS} GL zero ibs=10{in_streams(name)}", "cnnviz", "ig", ig_ours,
                  slow=True, keep="ig")
        if not args.quick:  # the model as given: the arithmetic captum does (the fast copy rounds differently)
            b.measure(name, f"integrated_gradients {IG_STEPS} GL zero ibs=10, fast_copy off", "cnnviz", "ig",
                      lambda: exact(ig_ours()), slow=True, note="reference", keep="ig_exact")
        for ibs in args.ig_batches:
            b.measure(name, f"IntegratedGradients {IG_STEPS} GL zero ibs={ibs}", "captum", "ig",
                      lambda ibs=ibs: ig_captum(model, x, ibs), slow=True, keep=f"ig_captum_{ibs}")
        b.rematch(name, "ig")
        if not args.quick:
            b.measure(name, f"bound: convolutions alone, {IG_STEPS // 10} x (fwd + input grad) at batch 10, one stream", "torch", "ig",
                      convolutions_alone(model, x, 10, IG_STEPS // 10), slow=True, note="reference")
            try:  # float32 accuracy itself: how far each library is from float64
                b.outputs[(name, "ig_ref64")] = [ig_captum(model.double(), x.double())()]
            finally:
                model.float()
            # the same method on the same network: captum on cnnviz's fast copy, and on a channels-last copy of
            # the model (how far captum itself moves with the memory layout alone)
            net, fx = fastpath.fast_model(model, x)
            if net is not model:
                b.outputs[(name, "ig_samenet_captum")] = [ig_captum(net, fx)()]
                if preset_streams(name) > 1:
                    b.outputs[(name, "ig_samenet1_captum")] = [one_thread(ig_captum(net, fx))()]
            b.outputs[(name, "ig_cl_captum")] = [ig_captum(fresh(model).to(memory_format=torch.channels_last),
                                                           x.contiguous(memory_format=torch.channels_last))()]

    if generic and "smoothgrad" in items:
        def sg_ours():
            return cnnviz_call(cnnviz_method("smoothgrad", mean, std, n_samples=SG_SAMPLES, noise_level=SG_NOISE,
                                             batch_size=10), model, x, [])

        b.measure(name, f"smoothgrad {SG_SAMPLES}x{SG_NOISE} batch 10{in_streams(name)}", "cnnviz", "smoothgrad", sg_ours,
                  slow=True, keep="sg")
        for bs in args.sg_batches:
            b.measure(name, f"NoiseTunnel(Saliency) {SG_SAMPLES}x{SG_NOISE} batch={bs}", "captum", "smoothgrad",
                      lambda bs=bs: captum_noise_tunnel(model, x, bs), slow=True, keep=f"sg_captum_{bs}")
        b.rematch(name, "smoothgrad")
        if not args.quick:  # the same draws: cnnviz (fast copy and the model as given) against captum on each network
            b.outputs[(name, "sg_exact")] = [exact(sg_ours())()]
            b.outputs[(name, "sg_draws_captum")] = [captum_noise_tunnel_given_draws(model, x)()]
            net, fx = fastpath.fast_model(model, x)
            if net is not model:
                b.outputs[(name, "sg_samenet_captum")] = [captum_noise_tunnel_given_draws(net, fx)()]
                if preset_streams(name) > 1:
                    b.outputs[(name, "sg_samenet1_captum")] = [one_thread(captum_noise_tunnel_given_draws(net, fx))()]

    if generic and "occlusion" in items:
        b.measure(name, f"occlusion w{OCC_WINDOW} s{OCC_STRIDE} b0 ppe=16", "cnnviz", "occlusion",
                  lambda: cnnviz_call(cnnviz_method("occlusion", mean, std, window=OCC_WINDOW, stride=OCC_STRIDE,
                                                    baseline=0.0), model, x, []), slow=True, keep="occ")
        for ppe in args.occ_batches:
            b.measure(name, f"Occlusion (3,{OCC_WINDOW},{OCC_WINDOW})/(3,{OCC_STRIDE},{OCC_STRIDE}) b0 ppe={ppe}",
                      "captum", "occlusion",
                      lambda ppe=ppe: captum_attr("Occlusion", model, x, sliding_window_shapes=(3, OCC_WINDOW, OCC_WINDOW),
                                                  strides=(3, OCC_STRIDE, OCC_STRIDE), baselines=0,
                                                  perturbations_per_eval=ppe),
                      slow=True, keep=f"occ_captum_{ppe}")
        b.rematch(name, "occlusion")


# ---------------------------------------------------------------- report

def best_peer(rows: list[Row], row: Row) -> Optional[Row]:
    peers = [r for r in rows if r.model == row.model and r.group == row.group and r.library != "cnnviz"
             and r.library != "torch" and r.ms is not None]
    return min(peers, key=lambda r: r.ms) if peers else None


def floor_ms(rows: list[Row], model: str) -> Optional[float]:
    """The median of every timed floor run of the model (measured before and after its other rows)."""
    times = [t for r in rows if r.model == model and r.group == "floor" for t in r.times]
    return statistics.median(times) if times else None


def x_floor(rows: list[Row], r: Row) -> Optional[float]:
    """``r``'s median over its floor: the floor runs interleaved with its own where it has them, else the
    model's pooled floor rows."""
    fl = statistics.median(r.floor_times) if r.floor_times else floor_ms(rows, r.model)
    return r.ms / fl if r.ms is not None and fl else None


def x_peer(rows: list[Row], r: Row) -> Optional[float]:
    """cnnviz ``r`` over the best peer: the median of its side-by-side pair ratios where it has them
    (slow items), else the ratio of the two medians. Should another peer row have ended up with a lower
    median than the paired one, the paired ratio is scaled by the two peers' medians (never lowered)."""
    peer = best_peer(rows, r) if r.library == "cnnviz" else None
    if r.pair_ratios and peer:
        return statistics.median(r.pair_ratios) * max(1.0, r.pair_peer.ms / peer.ms)
    return r.ms / peer.ms if peer and r.ms is not None else None


def table(rows: list[Row]) -> str:
    head = ["model", "technique", "library", "median ms", "x floor", "x best peer", "peak RSS MB", "runs / note"]
    lines = []
    for r in rows:
        xf, xp = x_floor(rows, r), x_peer(rows, r)
        runs = f"{r.runs}{' cold' if r.cold else ''}" if r.ms is not None else ""
        runs = ", ".join(p for p in (runs, r.note) if p)
        lines.append([
            r.model, r.technique, r.library,
            f"{r.ms:.1f}" if r.ms is not None else r.error,
            f"{xf:.2f}" if xf is not None else "",
            f"{xp:.3f}" if xp is not None else "",
            f"{r.rss_mb:.0f}",
            runs,
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    right = {3, 4, 5, 6}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right and not c.startswith("error") else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [fmt(head), "  ".join("-" * w for w in widths)]
    prev = None
    for l in lines:
        if prev is not None and l[0] != prev:
            out.append("")
        prev = l[0]
        out.append(fmt(l))
    return "\n".join(out)


def close(ours: np.ndarray, ref: np.ndarray) -> tuple[str, float]:
    """EQUAL / DIFFERENT at the bench's tolerance, and max|diff| / max|ref|."""
    ok = np.allclose(ours, ref, rtol=RTOL, atol=ATOL_REL * np.abs(ref).max())
    return ("EQUAL" if ok else "DIFFERENT"), float(np.abs(ours - ref).max() / np.abs(ref).max())


def agreement(b: Bench) -> list[str]:
    out = []
    for model in dict.fromkeys(r.model for r in b.rows):
        o = {k: v for (m, k), v in b.outputs.items() if m == model}
        if "ig" in o:
            ours = as_array(o["ig"][-1])
            for key in [k for k in o if k.startswith("ig_captum_")][:1]:
                ref = as_array(o[key][-1])
                out.append(f"{model}: integrated_gradients vs captum IntegratedGradients ({key[10:]}): "
                           "{} (max|diff| / max|captum| = {:.2e})".format(*close(ours, ref)))
                if "ig_exact" in o:
                    out.append(f"{model}:   cnnviz with fast_copy off (the model as given) vs captum: "
                               "{} (max|diff| / max|captum| = {:.2e}); the difference above is the fast copy's rounding "
                               "(channels-last convolutions, folded BatchNorm)".format(*close(as_array(o["ig_exact"][-1]), ref)))
                out += same_network_lines(model, o, "ig", ours)
                if "ig_cl_captum" in o:
                    out.append(f"{model}:   captum on a channels-last copy of the model vs captum on the model: "
                               "{} (max|diff| / max|captum| = {:.2e}): float32 IG moves this much with the memory layout "
                               "alone".format(*close(as_array(o["ig_cl_captum"][-1]), ref)))
                if "ig_ref64" in o:
                    exact = as_array(o["ig_ref64"][-1])
                    e_ours, e_peer = (float(np.abs(a - exact).max() / np.abs(exact).max()) for a in (ours, ref))
                    l2_ours, l2_peer = (float(np.linalg.norm(a - exact) / np.linalg.norm(exact)) for a in (ours, ref))
                    out.append(f"{model}:   against float64 (captum on a float64 copy): max|err| / max|ref| cnnviz "
                               f"{e_ours:.2e}, captum {e_peer:.2e} -> cnnviz {'no further' if e_ours <= e_peer else 'FURTHER'} "
                               f"from float64 than captum; relative L2 error cnnviz {l2_ours:.2e}, captum {l2_peer:.2e}")
        if "sg" in o and "sg_draws_captum" in o:
            ours, ref = as_array(o["sg"][-1]), as_array(o["sg_draws_captum"][-1])
            out.append(f"{model}: smoothgrad vs captum NoiseTunnel(Saliency) given cnnviz's noise draws: "
                       "{} (max|diff| / max|captum| = {:.2e})".format(*close(ours, ref)))
            if "sg_exact" in o:
                out.append(f"{model}:   cnnviz with fast_copy off (the model as given) vs captum: "
                           "{} (max|diff| / max|captum| = {:.2e})".format(*close(as_array(o["sg_exact"][-1]), ref)))
            out += same_network_lines(model, o, "sg", ours)
        if "sg" in o:
            ours = as_array(o["sg"][-1]).ravel()
            runs = [as_array(v).ravel() for k in o if k.startswith("sg_captum_") for v in o[k]]
            if runs:
                r = float(np.corrcoef(ours, runs[-1])[0, 1])
                scale = float(ours.std() / runs[-1].std())
                out.append(f"{model}: smoothgrad vs captum NoiseTunnel(Saliency), same sigma, different noise draws: "
                           f"Pearson r = {r:.3f} -> loose check r > {SG_MIN_CORR}: {'MET' if r > SG_MIN_CORR else 'NOT MET'}; "
                           f"std(cnnviz) / std(captum) = {scale:.3f}")
                if len(runs) > 1:
                    r_cc = float(np.corrcoef(runs[0], runs[-1])[0, 1])
                    same = r >= SG_SAME_FRAC * r_cc and abs(scale - 1) <= SG_SCALE_TOL
                    out.append(f"{model}:   for scale, two captum runs (different draws) give r = {r_cc:.3f}; same-estimator "
                               f"check (r >= {SG_SAME_FRAC} x captum-vs-captum r and std ratio within 1 +- {SG_SCALE_TOL}): "
                               f"{'CONSISTENT' if same else 'INCONSISTENT'}")
                else:
                    out.append(f"{model}:   (only one captum run kept: no captum-vs-captum r for scale)")
        if "occ" in o:
            ours = as_array(o["occ"][-1])
            for key in [k for k in o if k.startswith("occ_captum_")][:1]:
                ref = as_array(o[key][-1])
                # captum adds one clipped window per axis (start 216): pixels < 216 see the same windows in both
                n = ((224 - OCC_WINDOW) // OCC_STRIDE + 1) * OCC_STRIDE
                a, c = ours[..., :n, :n], ref[..., :n, :n]
                out.append(f"{model}: occlusion vs captum Occlusion ({key[11:]}), pixels [0,{n})^2: "
                           "{} (max|diff| / max|captum| = {:.2e})".format(*close(a, c)))
    return out


def same_network_lines(model: str, o: dict, key: str, ours: np.ndarray) -> list[str]:
    """cnnviz against captum run on cnnviz's fast copy; where cnnviz ran streams, also against captum with
    one intra-op thread (the arithmetic of each stream), and captum's own one-vs-two-thread difference."""
    if f"{key}_samenet_captum" not in o:
        return []
    two = as_array(o[f"{key}_samenet_captum"][-1])
    pairs = [("cnnviz vs captum run on the same network (cnnviz's fast copy)", ours, two)]
    if f"{key}_samenet1_captum" in o:
        one = as_array(o[f"{key}_samenet1_captum"][-1])
        pairs += [("the same, captum with one intra-op thread (as each cnnviz stream runs)", ours, one),
                  ("captum with one intra-op thread vs two, on the fast copy", one, two)]
    return [f"{model}:   {label}: " + "{} (max|diff| / max|captum| = {:.2e})".format(*close(a, b)) for label, a, b in pairs]


def same_network_verdict(model: str, label: str, o: dict, key: str, ref: np.ndarray) -> str:
    """Target 6's "results equal to captum's" for a gradient method: both libraries on one network, the
    fast copy (captum run on it too) and the model as given (cnnviz with fast_copy off). The fast copy is
    another network, equal as a function, whose float32 rounding the agreement lines measure (against
    float64, and captum's own change on a channels-last copy); its difference is printed alongside."""
    ours = as_array(o[key])
    samenet = as_array(o[f"{key}_samenet_captum"]) if f"{key}_samenet_captum" in o else ref  # else no copy was used
    same = [("fast copy vs captum on it", close(ours, samenet)),
            ("fast_copy off vs captum on the model", close(as_array(o[f"{key}_exact"]), ref))]
    ok = all(c[0] == "EQUAL" for _, c in same)
    across = "; across networks: fast copy vs captum on the model {} {:.1e}".format(*close(ours, ref))
    if f"{key}_cl_captum" in o:
        across += "; captum channels-last vs captum {} {:.1e}".format(*close(as_array(o[f"{key}_cl_captum"]), ref))
    if f"{key}_samenet1_captum" in o:  # printed, not part of the verdict
        across += "; fast copy vs captum on it at one intra-op thread {} {:.1e}".format(
            *close(ours, as_array(o[f"{key}_samenet1_captum"])))
    return (f"{'MET   ' if ok else 'MISSED'} {model}: {label} equal to captum's (rtol {RTOL:g}, atol {ATOL_REL:g} x max) "
            "when both run the same network: " + ", ".join(f"{lbl} {c[0]} {c[1]:.1e}" for lbl, c in same) + across)


def targets(b: Bench) -> list[str]:
    rows = b.rows
    out = []

    def get(model, group, library, note=None):
        return next((r for r in rows if r.model == model and r.group == group and r.library == library
                     and r.ms is not None and (note is None or r.note == note)), None)

    def verdict(ok):
        return "MET   " if ok else "MISSED"

    for model in dict.fromkeys(r.model for r in rows):
        fl = floor_ms(rows, model)
        if not fl:
            continue
        cams = [(c, get(model, c, "cnnviz")) for c in GRADIENT_CAMS]
        cams = [(c, x_floor(rows, r)) for c, r in cams if r]
        if cams:
            worst = max(v for _, v in cams)
            out.append(f"{verdict(worst <= 0.6)} {model}: gradient CAMs <= 0.6 x floor: worst {worst:.2f} ("
                       + ", ".join(f"{c} {v:.2f}" for c, v in cams) + ")")
        grads = [(g, get(model, g, "cnnviz")) for g in GRADIENTS]
        grads = [(g, x_floor(rows, r)) for g, r in grads if r]
        if grads:
            worst = max(v for _, v in grads)
            out.append(f"{verdict(worst <= 1.1)} {model}: vanilla/guided/deconvnet/grad_times_image <= 1.1 x floor: worst "
                       f"{worst:.2f} (" + ", ".join(f"{g} {v:.2f}" for g, v in grads) + ")")
        l16, loop = get(model, "layers16", "cnnviz"), get(model, "layers16", "pytorch-grad-cam")
        if l16:
            v = x_floor(rows, l16)
            out.append(f"{verdict(v <= 1.3)} {model}: 16-layer Grad-CAM <= 1.3 x floor: {v:.2f}")
            if loop:
                s = loop.ms / l16.ms
                out.append(f"{verdict(s >= 20)} {model}: 16-layer Grad-CAM >= 20x faster than the per-layer "
                           f"pytorch-grad-cam loop: {s:.1f}x")
        c4 = next((r for r in rows if r.model == model and r.group == "classic4" and r.library == "cnnviz"
                   and r.ms is not None and "compute_group" in r.technique), None)
        if c4:
            v = x_floor(rows, c4)
            out.append(f"{verdict(v <= 2.2)} {model}: classic four (compute_group) <= 2.2 x floor: {v:.2f}")
        ab, abp = get(model, "ablationcam", "cnnviz"), get(model, "ablationcam", "pytorch-grad-cam")
        if ab and abp:
            s = abp.ms / ab.ms
            out.append(f"{verdict(s >= 20)} {model}: ablationcam >= 20x faster than pytorch-grad-cam's: {s:.1f}x")
        sc, scp = get(model, "scorecam", "cnnviz"), get(model, "scorecam", "pytorch-grad-cam")
        if sc and scp:
            out.append(f"{verdict(sc.ms / scp.ms <= 0.8)} {model}: scorecam <= 0.8 x pytorch-grad-cam's: {sc.ms / scp.ms:.3f}")
        for group, label in (("ig", "integrated_gradients"), ("smoothgrad", "smoothgrad"), ("occlusion", "occlusion")):
            ours = get(model, group, "cnnviz")
            peer = best_peer(rows, ours) if ours else None
            if ours and peer:
                v = x_peer(rows, ours)
                how = (f"median of {len(ours.pair_ratios)} side-by-side pairs: "
                       + ", ".join(f"{p:.3f}" for p in ours.pair_ratios)
                       + f"; ratio of the medians {ours.ms / peer.ms:.3f}") if ours.pair_ratios else "ratio of the medians"
                out.append(f"{verdict(v <= 0.8)} {model}: {label} <= 0.8 x captum's best: {v:.3f} ({how}; "
                           f"best captum: {peer.technique})")
                # IG and SmoothGrad both take 50 forward + input-gradient passes at batch 10
                bound = next((r for r in rows if r.model == model and r.group == "ig" and r.library == "torch"
                              and r.ms is not None), None) if group != "occlusion" else None
                if bound:
                    out.append(f"     {model}: the convolutions alone of its {IG_STEPS} passes, in one stream, take "
                               f"{bound.ms / peer.ms:.3f} x captum's best, cnnviz ({streams_used(model)}) "
                               f"{ours.ms / bound.ms:.3f} x them")
        o = {k: v[-1] for (m, k), v in b.outputs.items() if m == model}
        ig_ref = next((v for k, v in o.items() if k.startswith("ig_captum_")), None)
        for key, label, ref in (("ig", "integrated_gradients", ig_ref), ("sg", "smoothgrad (the same noise draws)",
                                                                           o.get("sg_draws_captum"))):
            if ref is not None and key in o and f"{key}_exact" in o:
                out.append(same_network_verdict(model, label, o, key, as_array(ref)))
    return out


def streams_used(model: str) -> str:
    n = preset_streams(model)
    return f"{n} streams" if n > 1 else "one stream"


def classic_gallery(b: Bench, repeats: int) -> list[dict]:
    """`python run.py experiment=classic` in-process (12 items: 4 techniques x snake / cat_dog /
    spider), each repeat into a fresh folder with the model loaded anew; the runner's own timing
    (progress.json): wall = plan + model load + every item's compute, files, manifest and gallery."""
    import json
    import tempfile

    from hydra import compose, initialize_config_dir

    from cnnviz.app import plan as plan_module
    from cnnviz.app.schema import register_configs
    from cnnviz.app.runner import run

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=classic"])
    out = []
    for i in range(repeats + 1):  # the first is a warm-up (imports, allocator)
        plan_module._MODELS.clear()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                run(cfg, Path(tmp))
            except Exception as e:  # e.g. ../shared/images missing
                b.log(f"classic gallery failed: {first_line(e)}")
                return []
            timing = json.loads((Path(tmp) / "progress.json").read_text())["timing"]
        if i:
            out.append(timing)
            b.log(f"classic gallery (12 items): wall {timing['wall_s']:.2f} s = load {timing['load_s']:.2f} + compute "
                  f"{timing['compute_s']:.2f} + files {timing['other_s']:.2f} + gallery {timing['gallery_s']:.2f}; "
                  f"{timing['overhead']:.3f}x (load + compute)")
    return out


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "cnnviz"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes in cnnviz/" if dirty else "")
    except Exception:
        return "?"


def versions() -> str:
    out = [f"torch {torch.__version__}"]
    for mod in ("captum", "pytorch_grad_cam", "torchcam"):
        try:
            from importlib.metadata import version
            out.append(f"{mod} {version({'pytorch_grad_cam': 'grad-cam'}.get(mod, mod))}")
        except Exception:
            out.append(f"{mod} ?")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, generic rows on efficientnet_lite0 only, "
                    "vgg19-only rows kept but pytorch-grad-cam's AblationCAM, smaller captum batch grids, no torchcam "
                    "ScoreCAM (about 2.5 min on 2 cores)")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None,
                    help="models for the generic rows (default: both; --quick: efficientnet_lite0). Model-specific rows "
                         "(scorecam on efficientnet_lite0; 16-layer Grad-CAM and ablationcam on vgg19) run when their "
                         "model is listed, or always when --models is not given")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per item (default 5; --quick 2); slow items: 1")
    ap.add_argument("--slow-repeats", type=int, default=None,
                    help="side-by-side pairs of cnnviz and the fastest captum setting for IG / SmoothGrad / "
                         "occlusion, the order swapped every pair (default 3; --quick 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--items", nargs="+", choices=ITEMS, default=list(ITEMS), help="a subset of the comparisons")
    ap.add_argument("--scorecam-layer", default=None,
                    help="efficientnet_lite0 layer for the Score-CAM rows (default bn2, 1280 channels)")
    ap.add_argument("--exact", action="store_true",
                    help="run cnnviz on the models as given, without its BatchNorm-folded channels-last copy "
                         "(cnnviz.speed.fastpath); the peers always run the models as given")
    args = ap.parse_args()
    if args.exact:
        from cnnviz.speed import fastpath

        fastpath.set_enabled(False)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.slow_repeats is None:
        args.slow_repeats = 0 if args.quick else 3
    args.ig_batches = [10] if args.quick else [None, 10, 25]
    args.sg_batches = [10] if args.quick else [None, 10, 25]
    args.occ_batches = [16] if args.quick else [1, 16, 64]
    torch.set_num_threads(args.threads)
    memory.settle()  # every row, peers included, under the malloc settings cnnviz's batched calls leave
    warnings.filterwarnings("ignore")  # captum's "input did not require grad", hook-on-inplace notices
    generic_models = args.models or (["efficientnet_lite0"] if args.quick else list(MODELS))
    specific_models = args.models or list(MODELS)
    load0 = os.getloadavg()
    b = Bench(args)
    wall0 = time.perf_counter()
    for name in MODELS:
        generic, specific = name in generic_models, name in specific_models
        if generic or specific:
            run_model(b, name, generic, specific)
    gallery = classic_gallery(b, args.repeats) if "gallery" in args.items else []
    wall = time.perf_counter() - wall0
    load1 = os.getloadavg()

    print(f"cnnviz {git_rev()}; {versions()}")
    print(f"1x3x224x224 input (seeded randn), target {TARGET}, {torch.get_num_threads()} threads, "
          f"{'--quick, ' if args.quick else ''}{'--exact (no fast copy), ' if args.exact else 'fast copy on, '}median of {args.repeats} after 1 warm-up (slow items: 1 timed run; "
          f"IG / SmoothGrad / occlusion: then {args.slow_repeats} side-by-side pairs of cnnviz and captum's fastest setting)")
    print("IG / SmoothGrad streams (model.streams of conf/model/<name>.yaml, as run.py uses them): "
          + ", ".join(f"{m} {streams_used(m)}" for m in dict.fromkeys(r.model for r in b.rows)))
    print(f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; "
          f"{os.cpu_count()} CPUs")
    print()
    print(table(b.rows))
    print()
    print("x floor: median / the same model's floor: one forward + one backward of the target logit to the input.")
    print("  Rows timed several times take turns with the floor (technique, floor, technique, floor, ...) and divide by")
    print("  the median of those floor runs, so both see the machine at the same speed; rows timed once (slow) divide")
    print("  by the floor rows' runs pooled (timed before and after the model's other rows).")
    print("x best peer: cnnviz median / the fastest peer row of the same model and comparison (< 1: cnnviz faster);")
    print("  IG / SmoothGrad / occlusion (timed once each, then in pairs): the median of the pairs' ratios, each pair")
    print("  run back to back (cnnviz first in odd pairs, captum first in even ones); the targets print both.")
    print("  peers are blank. 'reference' rows (cnnviz run separately) are not peers.")
    print("peak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss, the process peak so far (monotonic; includes the")
    print("  models and the peers' deep copies), not the row's own footprint.")
    print(f"runs: timed runs; 'cold' = the first run took > {COLD_S:.0f} s, so it was not warmed up and counts as a timed run.")
    print("peers: each on its own copy.deepcopy of the model (made untimed); pytorch-grad-cam in `with Cls(...) as cam:`,")
    print("  torchcam with remove_hooks(); captum copies have ReLU/ReLU6 inplace=False. pytorch-grad-cam, torchcam and")
    print("  captum LayerGradCam rows include their upsampling to 224x224 (cnnviz CAMs return it too).")
    print("captum GuidedBackprop / Deconvolution rewrite only nn.ReLU: on efficientnet_lite0 (ReLU6) they compute the")
    print("  plain gradient, so those rows time the same passes but not the same rule.")
    print("captum Occlusion slides one extra, clipped window per axis (ceil((224-15)/8)+1 = 28 starts vs 27): 784 vs 729")
    print("  occluded images; the agreement check compares only pixels covered by the same windows.")
    print("pytorch-grad-cam ScoreCAM has no batch argument: it uses 16 (getattr(self, 'batch_size', 16)); its AblationCAM")
    print("  defaults to batch_size=32; torchcam ScoreCAM defaults to 32; cnnviz scorecam 16, ablationcam 64.")
    print("cnnviz scorecam skips channels that are constant on the input ('k/C channels vary' in its row); the peers")
    print("  forward every channel's masked image. The input is seeded noise, not a photograph.")
    print("malloc: cnnviz's batched techniques (IG, SmoothGrad, occlusion, Score-CAM, Ablation-CAM) keep freed memory")
    print("  in malloc's heap between their batches (cnnviz/memory.py); outside those calls every row, peers included,")
    print("  runs with glibc's thresholds fixed at their dynamic maxima (mmap > 32 MB, trim > 64 MB), set at start.")
    if args.quick:
        skipped = ["pytorch-grad-cam AblationCAM (about 2.5 minutes; so no ablationcam target line)"]
        if not args.scorecam_layer:
            skipped.insert(0, "torchcam ScoreCAM (about one minute)")
        print(f"--quick: {' and '.join(skipped)} skipped; the full benchmark runs them.")
    print()
    print(f"agreement (np.allclose, rtol={RTOL:g}, atol={ATOL_REL:g} x max|captum|, elementwise). SmoothGrad is compared")
    print("  elementwise with captum's NoiseTunnel fed cnnviz's noise draws (torch.normal replaced for that call); the")
    print(f"  timed runs draw their own noise, so they are compared only loosely: Pearson r > {SG_MIN_CORR}; with {SG_SAMPLES} samples")
    print(f"  at noise {SG_NOISE} two runs of ONE library correlate far below that, so the captum-vs-captum r is printed for")
    print("  scale, with a same-estimator check. 'the same network': captum run on cnnviz's fast copy (channels-last,")
    print("  BatchNorm folded), or cnnviz with fast_copy off on the model as given:")
    for line in agreement(b) or ["(no agreement items run)"]:
        print("  " + line)
    print()
    print("targets (measured above, never loosened):")
    for line in targets(b) or ["(no target items run)"]:
        print("  " + line)
    if gallery:
        import statistics

        ratio = statistics.median(t["overhead"] for t in gallery)
        verdict = "MET   " if ratio <= 1.15 else "MISSED"
        print(f"  {verdict} classic 12-item gallery in one job: wall <= 1.15 x (model load + items' compute): "
              f"median {ratio:.3f} over {len(gallery)} run(s) (" + ", ".join(
                  f"{t['wall_s']:.2f} s / ({t['load_s']:.2f} + {t['compute_s']:.2f})" for t in gallery) + ")")
    print()
    print(f"total wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
