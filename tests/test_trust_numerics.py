"""Issue 21, numerics and model loading: non-finite weights, logits and maps stop an item with a
clear error; checkpoints that are not checkpoints, or do not fit, say so; LRP-ε never divides 0/0;
SmoothGrad on a constant image says that its noise was zero; float64 inputs give float64 results."""
from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

from cnnviz import Attribution, ConfigError, get_method, list_methods
from cnnviz.core.attribution import NonFiniteError
from cnnviz.engine import compute_group
from cnnviz.models.loaders import check_finite, checkpoint_model

from conftest import TinyCNN, any_model, run_cli, tiny_method

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

METHODS = [n for n in list_methods() if any_model(n)]
LAYER = "features.3"
B, H, W = 2, 10, 12
TARGET = [1, 4]


def inputs(seed: int = 0, batch: int = B, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def layer_for(name: str):
    return LAYER if get_method(name).needs_layer else None


def run(name: str, model: nn.Module, x: torch.Tensor, target=TARGET, **params) -> Attribution:
    return tiny_method(name, **params)(model, x, target, layer=layer_for(name))


# --------------------------------------------------------------------------------------------
# Point 10: non-finite weights (checked once per load), logits and maps
# --------------------------------------------------------------------------------------------

def poisoned_tiny(name: str, values) -> TinyCNN:
    model = TinyCNN()
    with torch.no_grad():
        flat = dict(model.named_parameters())[name].view(-1)
        flat[: len(values)] = torch.tensor(values)
    return model


def test_check_finite_names_the_first_bad_parameter_and_counts():
    check_finite(TinyCNN(), "model tiny")  # a healthy model passes
    model = poisoned_tiny("features.2.weight", [float("nan")] * 3 + [float("inf")])
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")  # a later bad tensor: the first one is named
    with pytest.raises(ConfigError) as e:
        check_finite(model, "model.path: checkpoint 'x.pt'")
    msg = str(e.value)
    assert msg.startswith("model.path: checkpoint 'x.pt'")
    assert "'features.2.weight'" in msg and "3 NaN" in msg and "1 +Inf" in msg
    assert "fc.weight" not in msg


def test_check_finite_checks_buffers_too():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4), relu=nn.ReLU()))
    check_finite(model, "model")
    model.bn.running_var[2] = float("-inf")
    with pytest.raises(ConfigError, match=r"'bn\.running_var' \(1 -Inf of 4\)"):
        check_finite(model, "model")


def test_load_model_checks_weights_and_never_caches_a_bad_load(tmp_path):
    from omegaconf import OmegaConf

    from cnnviz.app import plan

    state = tvm.squeezenet1_1().state_dict()
    state["features.0.bias"][:2] = float("nan")
    f = tmp_path / "sq.pt"
    torch.save(state, f)
    cfg = OmegaConf.create({"_target_": "cnnviz.models.loaders.checkpoint_model", "arch": "squeezenet1_1", "weights": None,
                            "path": str(f), "library": "torchvision", "name": None})
    for _ in range(2):  # the second load must check again, not reuse a cached bad model
        with pytest.raises(ConfigError, match=r"model\.path: checkpoint .*'features\.0\.bias' \(2 NaN of 64\)"):
            plan.load_model(cfg, 0)
    plan._MODELS.clear()


@pytest.mark.slow  # a run.py start-up and a resnet18 build
def test_nan_weight_checkpoint_fails_the_run_naming_the_tensor(tmp_path, image_cache):
    state = tvm.resnet18().state_dict()  # any init: the NaN makes the point
    state["layer1.0.conv1.weight"].view(-1)[[5, 17, 40]] = float("nan")
    f = tmp_path / "r18-nan.pt"
    torch.save(state, f)
    proc = run_cli(["model=checkpoint", f"model.path={f}", "model.arch=resnet18", "method=vanilla_backprop", "image=coffee"],
                   tmp_path / "run", image_cache)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out  # a configuration error: found before any work
    assert "'layer1.0.conv1.weight'" in out and "3 NaN" in out and "model.path" in out and str(f) in out
    assert "Traceback" not in out
    manifest = tmp_path / "run" / "manifest.csv"
    assert not manifest.exists() or ",ok," not in manifest.read_text()


class NaNLogits(TinyCNN):
    """TinyCNN whose logit 0 (``one``) or every logit (``all``) is NaN for every input, like a model
    with one poisoned weight row or a poisoned layer."""

    def __init__(self, which: str):
        super().__init__()
        with torch.no_grad():
            if which == "one":
                self.fc.weight[0, 0] = float("nan")
            else:
                self.fc.bias[:] = float("nan")


@pytest.mark.parametrize("which", ["one", "all"])
@pytest.mark.parametrize("name", METHODS)
def test_nan_logits_are_an_error_for_every_technique(name, which):
    with pytest.raises(NonFiniteError, match="the model's logits"):
        run(name, NaNLogits(which), inputs(batch=1), target=[1])


class CliffNet(nn.Module):
    """Logits ``10·mean(x) + k`` for classes k = 0..2, NaN once mean(x) > 0.03: finite at the mean-colour
    start (mean 0), NaN after the first step up the logit (each pixel moves by about lr = 0.05)."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        cliff = torch.where(m > 0.03, torch.full_like(m, float("nan")), torch.zeros_like(m))
        return (10 * m + cliff)[:, None] + torch.arange(3.0)


OPTIMISING = [n for n in list_methods() if n.startswith("class_model")]


@pytest.mark.parametrize("kind", ["pixel", "fft"])
@pytest.mark.parametrize("name", OPTIMISING)
def test_an_optimisation_stops_at_the_first_non_finite_loss_naming_the_step(name, kind):
    """Not 512 steps of NaN and a blank picture: the step where the loss left the finite numbers, the
    technique, and what to try."""
    x = torch.zeros(1, 3, 8, 8)
    step = "1" if kind == "pixel" else r"\d+"  # the Fourier image's mean climbs more slowly
    with pytest.raises(NonFiniteError, match=rf"{name}: the loss is not finite at step {step} \(1 NaN; in score\).*"
                                             rf"method\.{name}\.lr"):
        get_method(name)(steps=20, lr=0.05, parametrization=kind, transforms="none", input_mean=[0.5] * 3,
                         input_std=[0.5] * 3)(CliffNet(), x, 0)


def test_attribution_refuses_non_finite_maps_naming_the_technique_and_layer():
    ok = dict(method="gradcam", logits=np.zeros((1, 3), np.float32), target=(0,), layer="blocks.4")
    Attribution(values=np.ones((1, 2, 2), np.float32), upsampled=np.ones((1, 4, 4), np.float32), **ok)
    with pytest.raises(NonFiniteError, match=r"gradcam.*'blocks\.4'.*1 NaN"):
        Attribution(values=np.array([[[1.0, np.nan], [0.0, 0.0]]], np.float32), **ok)
    with pytest.raises(NonFiniteError, match=r"gradcam.*'blocks\.4'.*upsampled.*1 \+Inf"):
        Attribution(values=np.ones((1, 2, 2), np.float32), upsampled=np.array([[[np.inf]]], np.float32), **ok)
    with pytest.raises(NonFiniteError, match="the model's logits"):
        Attribution(values=np.ones((1, 2, 2), np.float32), **{**ok, "logits": np.array([[0.0, np.nan, 1.0]])})


class Scale(nn.Module):
    """x · 1e38 · 1e38: ±Inf in float32 wherever x is not 0."""

    def forward(self, x):
        return x * 1e38 * 1e38


class OverflowNet(nn.Sequential):
    """conv -> ``big`` (overflows) -> tanh -> GAP -> linear: finite logits, but ±Inf activations at
    ``big`` (whose gradient is 0: a CAM there would be 0 · Inf = NaN)."""

    def __init__(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            super().__init__(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), big=Scale(), act=nn.Tanh(),
                                         pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 3)))


class Sqrt(nn.Module):
    """√x, whose derivative at 0 is +Inf."""

    def forward(self, x):
        return torch.sqrt(x)


class SqrtNet(nn.Sequential):
    """conv -> ReLU (``act``) -> sqrt -> GAP -> linear: finite activations and logits, but the
    gradient at ``act`` is ±Inf wherever the ReLU gave 0 (d√a/da = ∞ at 0)."""

    def __init__(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            super().__init__(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), act=nn.ReLU(), sqrt=Sqrt(),
                                         pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 3)))


GRADIENT_CAMS = [n for n in METHODS if get_method(n).map_space == "layer" and get_method(n).uses_gradients]


@pytest.mark.parametrize("name", GRADIENT_CAMS)
def test_a_non_finite_cam_is_an_error_not_a_blank_map(name):
    """Once passed through nan_to_num: a blank picture and an "all zero" warning."""
    model, x = SqrtNet(), inputs(batch=1)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()  # the premise: the logits are fine
    with pytest.raises(NonFiniteError, match=rf"{name} at layer 'act': the map is not finite"):
        get_method(name)()(model, x, 1, layer="act")


@pytest.mark.parametrize("name", [n for n in METHODS if get_method(n).map_space == "layer"])
def test_non_finite_activations_are_an_error_for_every_cam(name):
    """Named as such, also where the technique would otherwise fail on its own (EigenCAM's SVD)."""
    model, x = OverflowNet(), inputs(batch=1)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    with pytest.raises(NonFiniteError, match=rf"{name} at layer 'big': the layer's activations are not finite"):
        get_method(name)()(model, x, 1, layer="big")


def test_compute_group_reports_a_non_finite_map_as_that_techniques_error():
    model, x = OverflowNet(), inputs(batch=1)
    methods = {"gradcam": get_method("gradcam")(), "vanilla_backprop": get_method("vanilla_backprop")()}
    out = compute_group(methods, model, x, 1, {"gradcam": ["big"], "vanilla_backprop": []})
    assert isinstance(out["gradcam"].error, NonFiniteError)
    # the other technique of the group is unaffected
    assert out["vanilla_backprop"].error is None and np.isfinite(out["vanilla_backprop"].attributions[0].values).all()


# --------------------------------------------------------------------------------------------
# Point 14: checkpoints that are not checkpoints, or do not fit
# --------------------------------------------------------------------------------------------

TORCH_ADVICE = ("will likely succeed", "weights_only=False", "weights_only` set to `False")


def not_torch_files(tmp_path: Path) -> dict[str, Path]:
    files = {"random": os.urandom(4096), "text": b"hello world\n" * 20, "empty": b""}
    out = {}
    for kind, data in files.items():
        out[kind] = tmp_path / f"{kind}.pt"
        out[kind].write_bytes(bytes([0x3F]) + data[1:] if kind == "random" else data)
    out["zip"] = tmp_path / "images.pt"
    with zipfile.ZipFile(out["zip"], "w") as z:
        z.writestr("a.txt", "not a tensor")
    return out


@pytest.mark.parametrize("kind", ["random", "text", "empty", "zip"])
def test_a_file_that_is_no_checkpoint_says_so(tmp_path, kind):
    f = not_torch_files(tmp_path)[kind]
    with pytest.raises(ConfigError) as e:
        checkpoint_model("resnet18", path=str(f))
    msg = str(e.value)
    assert "model.path" in msg and str(f) in msg and "not a PyTorch checkpoint" in msg
    assert not any(a in msg for a in TORCH_ADVICE), msg


def test_a_truncated_checkpoint_says_it_is_damaged(tmp_path):
    f = tmp_path / "cut.pt"
    torch.save(tvm.squeezenet1_1().state_dict(), f)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"model\.path: .*cut\.pt.*damaged") as e:
        checkpoint_model("squeezenet1_1", path=str(f))
    assert not any(a in str(e.value) for a in TORCH_ADVICE)


def test_a_pickled_full_model_is_refused_without_torchs_advice(tmp_path):
    f = tmp_path / "full.pt"
    torch.save(tvm.squeezenet1_1(), f)
    with pytest.raises(ConfigError) as e:
        checkpoint_model("squeezenet1_1", path=str(f))
    msg = str(e.value)
    assert "pickled code" in msg and "state_dict()" in msg and "SqueezeNet" in msg
    assert not any(a in msg for a in TORCH_ADVICE), msg


def test_a_state_dict_of_another_arch_names_missing_keys_and_suggests_model_arch(tmp_path):
    f = tmp_path / "r18.pt"
    torch.save(tvm.resnet18().state_dict(), f)
    with pytest.raises(ConfigError) as e:
        checkpoint_model("resnet34", path=str(f))
    msg = str(e.value)
    assert "does not fit" in msg and "missing" in msg and "layer1.2.conv1.weight" in msg
    assert "model.arch" in msg and "model.library" in msg
    assert len(msg) < 1500  # the first few keys, not all of them


def test_a_state_dict_with_other_keys_names_the_unexpected_ones(tmp_path):
    f = tmp_path / "sq.pt"
    torch.save(tvm.squeezenet1_1().state_dict(), f)
    with pytest.raises(ConfigError) as e:
        checkpoint_model("resnet18", path=str(f))
    msg = str(e.value)
    assert "unexpected" in msg and "features.0.weight" in msg and "missing" in msg and "conv1.weight" in msg


def test_a_state_dict_with_other_shapes_names_them(tmp_path):
    f = tmp_path / "r18-10.pt"
    torch.save(tvm.resnet18(num_classes=10).state_dict(), f)
    with pytest.raises(ConfigError) as e:
        checkpoint_model("resnet18", path=str(f))
    msg = str(e.value)
    assert "fc.weight" in msg and "(10, 512)" in msg and "(1000, 512)" in msg and "shape" in msg


def test_a_data_parallel_prefix_is_pointed_out(tmp_path):
    f = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in tvm.squeezenet1_1().state_dict().items()}, f)
    with pytest.raises(ConfigError, match=r"'module\.' prefix.*model\.module\.state_dict\(\)") as e:
        checkpoint_model("squeezenet1_1", path=str(f))
    assert "model.arch" not in str(e.value)  # the architecture is right, the keys are not


# --------------------------------------------------------------------------------------------
# Point 15: LRP-ε with a constant layer output, and the paper's absolute ε
# --------------------------------------------------------------------------------------------

def vgg_like() -> nn.Sequential:
    """conv -> ReLU -> conv -> ReLU -> maxpool -> flatten -> linear -> ReLU -> linear, zero biases
    (as torchvision initialises VGG): an all-zero input makes every layer's output constant 0."""
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 5 * 6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.zeros_like(p) if name.endswith("bias") else torch.randn(p.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize("params", [dict(rule="epsilon"), dict(rule="epsilon", first_layer="same"), dict(rule="composite"),
                                    dict(rule="epsilon", epsilon_mode="absolute")])
def test_lrp_on_an_all_zero_input_is_finite(params):
    x = torch.zeros(1, 3, H, W)
    attr = get_method("lrp")(input_mean=[0.5] * 3, input_std=[0.5] * 3, **params)(vgg_like(), x, 1)
    assert np.isfinite(attr.values).all() and np.isfinite(attr.logits).all()
    assert np.isfinite(attr.metrics["relevance_sum"])


def test_lrp_relative_epsilon_results_are_unchanged_on_ordinary_inputs():
    """The floor only acts where the layer's output is constant: elsewhere the relative ε is the
    documented ε · std(z) per image (checked against the explicit formula at the last layer)."""
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * H * W, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    x = inputs(batch=1, dtype=torch.float64)
    attr = get_method("lrp")(rule="epsilon", first_layer="same", epsilon=0.25)(model, x, 1)
    # LRP-ε with ε = 0.25 · std(z) per layer, layer by layer; ReLU and Flatten pass relevance on
    h = x
    zs = []
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            zs.append((m, h))
        h = m(h)
    relevance = torch.zeros_like(h)
    relevance[0, 1] = h[0, 1]
    for m, a in reversed(zs):
        a = a.detach().clone().requires_grad_(True)
        z = m(a)
        eps = 0.25 * z.detach().flatten(1).std(dim=1).view(-1, *([1] * (z.ndim - 1)))
        s = relevance.reshape(z.shape) / (z + torch.where(z >= 0, eps, -eps))
        (c,) = torch.autograd.grad(z, a, grad_outputs=s.detach())
        relevance = (a * c).detach()
    np.testing.assert_allclose(attr.values, relevance.numpy(), rtol=1e-9, atol=1e-12)


def test_lrp_absolute_epsilon_is_the_papers_rule_on_a_two_layer_linear_net():
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64)
    eps, target = 0.7, 2
    attr = get_method("lrp")(rule="epsilon", first_layer="same", epsilon=eps, epsilon_mode="absolute")(model, x, target)
    # R_i = Σ_j a_i w_ij / (z_j + ε sign z_j) R_j, sign(0) = +1, starting from R = the target logit
    w1, b1 = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    w2, b2 = model[3].weight.detach().numpy(), model[3].bias.detach().numpy()
    a0 = x.numpy().reshape(-1)
    z1 = w1 @ a0 + b1
    a1 = np.maximum(z1, 0)
    z2 = w2 @ a1 + b2
    stab = lambda z: z + eps * np.where(z >= 0, 1.0, -1.0)  # noqa: E731
    r2 = np.zeros(3)
    r2[target] = z2[target]
    r1 = a1 * (w2.T @ (r2 / stab(z2)))
    r0 = a0 * (w1.T @ (r1 / stab(z1)))
    np.testing.assert_allclose(attr.values.reshape(-1), r0, rtol=1e-10, atol=1e-13)
    relative = get_method("lrp")(rule="epsilon", first_layer="same", epsilon=eps)(model, x, target)
    assert not np.allclose(relative.values.reshape(-1), r0)  # the default (relative) is another ε


def test_lrp_unknown_epsilon_mode_names_the_key():
    with pytest.raises(ConfigError, match=r"method\.lrp\.epsilon_mode.*absolute"):
        get_method("lrp")(epsilon_mode="paper")(vgg_like(), torch.zeros(1, 3, H, W), 1)


def test_lrp_config_offers_epsilon_mode():
    from omegaconf import OmegaConf

    from conftest import ROOT

    cfg = OmegaConf.load(ROOT / "conf" / "method" / "lrp.yaml")
    assert cfg.epsilon_mode == "relative"


# --------------------------------------------------------------------------------------------
# Point 16: CAMs are no longer passed through nan_to_num (see the Overflow tests above); an
# all-zero map still warns
# --------------------------------------------------------------------------------------------

def test_a_truly_zero_cam_still_warns_and_is_not_an_error():
    model = OverflowNet()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.zero_()
    attr = get_method("gradcam")()(model, inputs(batch=1), 1, layer="big")
    assert (attr.values == 0).all() and any("all zero" in w for w in attr.warnings)


# --------------------------------------------------------------------------------------------
# Point 17: SmoothGrad on a constant image
# --------------------------------------------------------------------------------------------

def test_smoothgrad_on_a_constant_image_warns_that_sigma_was_zero():
    x = torch.full((1, 3, H, W), 0.3)
    attr = tiny_method("smoothgrad")(TinyCNN(), x, 1)
    plain = get_method("vanilla_backprop")()(TinyCNN(), x, 1)
    # the premise: no noise at all (batches of 3 copies round differently from one image)
    np.testing.assert_allclose(attr.values, plain.values, rtol=1e-4, atol=1e-7)
    warning = " ".join(attr.warnings)
    assert "σ" in warning or "sigma" in warning
    assert "constant" in warning and "noise_level" in warning and "max" in warning


def test_smoothgrad_names_which_images_of_a_batch_were_constant():
    x = inputs(batch=3)
    x[1] = -0.7
    warning = " ".join(tiny_method("smoothgrad")(TinyCNN(), x, [0, 1, 2]).warnings)
    assert "constant" in warning and "image 1 " in warning and "image 0" not in warning and "image 2" not in warning


def test_smoothgrad_on_an_ordinary_image_does_not_warn():
    assert tiny_method("smoothgrad")(TinyCNN(), inputs(batch=1), 1).warnings == ()


# --------------------------------------------------------------------------------------------
# Point 18: the input's dtype is kept through the library API
# --------------------------------------------------------------------------------------------

def _float64_only(a: np.ndarray) -> bool:
    """Whether some value of ``a`` is not a float32 number: proof that it was computed in float64,
    not computed in float32 and cast."""
    return bool(np.any(a != a.astype(np.float32).astype(np.float64)))


@pytest.mark.parametrize("name", METHODS)
def test_float64_input_gives_float64_results(name):
    model, x = TinyCNN().double(), inputs(dtype=torch.float64)
    attr = run(name, model, x)
    assert attr.values.dtype == np.float64 and attr.logits.dtype == np.float64
    assert _float64_only(attr.values) and _float64_only(attr.logits)
    if attr.upsampled is not None:
        assert attr.upsampled.dtype == np.float64 and _float64_only(attr.upsampled)


@pytest.mark.parametrize("name", METHODS)
def test_float32_input_still_gives_float32_results(name):
    attr = run(name, TinyCNN(), inputs())
    assert attr.values.dtype == np.float32 and attr.logits.dtype == np.float32
    assert attr.upsampled is None or attr.upsampled.dtype == np.float32


def test_guided_gradcam_in_float64_multiplies_float64_maps():
    """The product of the two float64 maps, not of a float32-rounded CAM (the dtype check above
    cannot see a factor that was rounded on the way)."""
    model, x = TinyCNN().double(), inputs(dtype=torch.float64)
    attr = get_method("guided_gradcam")()(model, x, TARGET, layer=LAYER)
    cam = get_method("gradcam")()(model, x, TARGET, layer=LAYER)
    guided = get_method("guided_backprop")()(model, x, TARGET)
    np.testing.assert_array_equal(attr.values, guided.values * cam.upsampled[:, None])
