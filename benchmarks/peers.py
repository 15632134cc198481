"""Adapters for the peers (pytorch-grad-cam, torchcam, captum): each builds its library's call on a
private copy of the model, untimed, and returns the function to time. The peers are imported inside
each adapter, so the benchmark and ``tests/test_peers.py`` run without them until they are needed."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from benchmarks.harness import fresh, submodule
from benchmarks.settings import SG_NOISE, SG_SAMPLES, TARGET


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
