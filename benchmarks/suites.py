"""The suites: which comparisons run on which model (``run_model`` / ``run_items``), cnnviz's side of
each (``cnnviz_call`` and friends) and the classic 12-item gallery through the runner."""
from __future__ import annotations

import gc
from pathlib import Path

import torch
from torch import nn

from benchmarks.harness import Bench, first_line, fresh, submodule
from benchmarks.peers import (captum_attr, captum_classic4, captum_layer_gradcam, captum_noise_tunnel,
                              captum_noise_tunnel_given_draws, gradcam_lib, torchcam_lib)
from benchmarks.settings import (GRADIENT_CAMS, GRADIENTS, IG_STEPS, MODELS, OCC_STRIDE, OCC_WINDOW, ROOT,
                                 SG_NOISE, SG_SAMPLES, TARGET, CLASSIC4, load_model)
from cnnviz import get_method
from cnnviz.engine import compute, compute_group
from cnnviz.speed import Speed, applied, fastpath


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


def runner_speed(model: str, fast_copy: bool = True) -> Speed:
    """The accelerations ``python run.py model=<model>`` runs with: ``reuse_memory`` (and ``fast_copy``,
    unless ``--exact``) of conf/config.yaml, ``model.streams`` of the model's preset. The library API
    has them all off; the benchmark times cnnviz as the runner uses it."""
    from omegaconf import OmegaConf

    top = OmegaConf.load(ROOT / "conf" / "config.yaml")
    return Speed(fast_copy=fast_copy and bool(top.get("fast_copy", True)), streams=preset_streams(model),
                 reuse_memory=bool(top.get("reuse_memory", True)))


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
    model = load_model(name).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def floor_fn():
        def run():
            xi = x.clone().requires_grad_(True)
            return torch.autograd.grad(model(xi)[0, TARGET], xi)[0]
        return run

    b.measure(name, "floor (fwd+bwd to input)", "torch", "floor", floor_fn)
    b.floors[name] = floor_fn
    try:
        with applied(runner_speed(name, fast_copy=not b.args.exact)):  # as run.py would with model=<name>
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
    layer, mean, std = MODELS[name]
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
        names = CLASSIC4

        def group_fn():
            methods = {n: cnnviz_method(n, mean, std) for n in names}
            layers = {n: (L if methods[n].needs_layer else []) for n in names}

            def run():
                out = compute_group(methods, model, x, TARGET, layers)
                for n, res in out.items():
                    if res.error is not None:
                        raise RuntimeError(f"{n}: {first_line(res.error)}")
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
