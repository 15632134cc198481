"""CAMs on vision transformers, Swin and ConvNeXt: token outputs and channels-last maps viewed as
(B, C, h, w) (cnnviz/core/tokens.py), checked against float64 references on a tiny hand-built
transformer and run on tiny timm models of each family; layer=all on transformers; guided rules refused
on non-ReLU nonlinearities; timm's own preprocessing."""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import get_method
from cnnviz.core.errors import ConfigError
from cnnviz.core.tokens import Layout, layout_of, token_grid
from conftest import TinyCNN, hook_count, ok, run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

CAMS = ["gradcam", "gradcam_plusplus", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam", "ablationcam",
        "gradcam_elementwise"]


# ---- a tiny hand-built transformer ---------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) / math.sqrt(c // self.heads)).softmax(dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """16x16 input, 4x4 patches (a 4x4 grid), embed 8, one class token, 2 blocks, 3 classes.
    ``declares``: whether it carries timm's ``num_prefix_tokens`` and a ``patch_embed``."""

    def __init__(self, seed: int = 0, declares: bool = True, classes: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 17, 8) * 0.5)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, classes)
        if declares:
            self.num_prefix_tokens = 1

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.norm(self.blocks(t))[:, 0])


def reference_gradcam(model: nn.Module, x: torch.Tensor, target: int, block: str, prefix: int, grid,
                      relu: bool = True) -> torch.Tensor:
    """ReLU(Σ_c mean_tokens(dy/dA_c) A_c) over the patch tokens, by hand with autograd."""
    seen = {}
    module = dict(model.named_modules())[block]
    handle = module.register_forward_hook(lambda _m, _i, out: seen.setdefault("a", out))
    try:
        y = model(x)[:, target].sum()
    finally:
        handle.remove()
    a = seen["a"]
    g, = torch.autograd.grad(y, a)
    a, g = a[:, prefix:], g[:, prefix:]                       # (B, h*w, C)
    cam = (g.mean(dim=1, keepdim=True) * a).sum(dim=2)        # (B, h*w)
    return (cam.clamp(min=0) if relu else cam).reshape(x.shape[0], *grid)


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_on_tokens_equals_the_float64_reference(relu):
    model = TinyViT(seed=1).double().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    attr = get_method("gradcam")(relu=relu)(model, x, target=[1, 2], layer="blocks.0")
    ref = torch.cat([reference_gradcam(model, x[i:i + 1], t, "blocks.0", 1, (4, 4), relu) for i, t in enumerate([1, 2])])
    assert attr.values.shape == (2, 4, 4) and attr.upsampled.shape == (2, 16, 16)
    assert ref.abs().max() > 0
    np.testing.assert_allclose(attr.values, ref.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_gradcam_at_the_last_block_of_a_class_token_model_is_zero_and_says_so():
    """The head reads the class token only, through per-token ops: no gradient reaches the last
    block's patch tokens, so the map is zero (as in the reference), a warning, never noise."""
    model = TinyViT(seed=1).double().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    attr = get_method("gradcam")(relu=False)(model, x, target=1, layer="blocks.1")
    assert not attr.values.any() and not reference_gradcam(model, x, 1, "blocks.1", 1, (4, 4), False).any()
    assert any("all zero" in w for w in attr.warnings)


def test_an_undeclared_prefix_needs_the_grid_and_token_grid_gives_it():
    """17 tokens on a square input without num_prefix_tokens or patch_embed: no square grid, so a
    ConfigError naming the key; with the grid given, the one left-over token is the prefix."""
    model = TinyViT(seed=1, declares=False).double().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"model\.token_grid=\[h,w\]"):
        get_method("gradcam")()(model, x, target=1, layer="blocks.1")
    assert hook_count(model) == 0
    with token_grid(model, (4, 4)):
        attr = get_method("gradcam")(relu=False)(model, x, target=1, layer="blocks.0")
    assert not hasattr(model, "cnnviz_token_grid")  # left as found
    ref = reference_gradcam(model, x, 1, "blocks.0", 1, (4, 4), False)
    np.testing.assert_allclose(attr.values, ref.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_a_wrong_token_grid_is_refused_not_guessed():
    model = TinyViT(seed=1).double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with token_grid(model, (3, 5)), pytest.raises(ConfigError, match=r"3x5 grid .*model\.token_grid.*1 prefix"):
        get_method("gradcam")()(model, x, target=1, layer="blocks.1")
    with pytest.raises(ConfigError, match="token_grid must be two positive integers"):
        with token_grid(model, (4, 0)):
            pass


def test_token_layers_serve_every_block_from_one_pass(monkeypatch):
    from cnnviz.core import passes

    calls = []
    real = passes.gradient_pass
    monkeypatch.setattr(passes, "gradient_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = TinyViT(seed=3).double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    attrs = get_method("gradcam")().attribute_layers(model, x, 0, ["blocks.0", "blocks.1"])
    assert len(calls) == 1 and [a.layer for a in attrs] == ["blocks.0", "blocks.1"]
    for a in attrs:
        np.testing.assert_allclose(a.values, reference_gradcam(model, x, 0, a.layer, 1, (4, 4)).detach().numpy(),
                                   rtol=1e-10, atol=1e-12)


def test_ablationcam_on_tokens_zeroes_a_patch_channel_and_keeps_the_class_token():
    """w_k = (y - y^{A_k=0}) / y with A_k channel k of the patch tokens, by hand."""
    model = TinyViT(seed=5).double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    attr = get_method("ablationcam")(batch_size=3)(model, x, target=2, layer="blocks.0")
    block = model.blocks[0]
    with torch.no_grad():
        seen = {}
        h = block.register_forward_hook(lambda _m, _i, out: seen.setdefault("a", out.clone()))
        y = model(x)[0, 2]
        h.remove()
        acts = seen["a"]
        weights = []
        for k in range(8):
            def ablate(_m, _i, out, k=k):
                out = out.clone()
                out[:, 1:, k] = 0
                return out
            h = block.register_forward_hook(ablate)
            weights.append((y - model(x)[0, 2]) / y)
            h.remove()
        ref = torch.einsum("c,nc->n", torch.stack(weights), acts[0, 1:]).clamp(min=0).reshape(4, 4)
    np.testing.assert_allclose(attr.values[0], ref.numpy(), rtol=1e-9, atol=1e-12)


def test_layouts_of_channels_last_and_tokens():
    model = TinyViT()
    x_shape = (2, 3, 16, 16)
    assert layout_of(model, "blocks.0", torch.zeros(2, 17, 8), x_shape) == Layout("tokens", 1, (4, 4))
    assert layout_of(model, "embed", torch.zeros(2, 8, 4, 4), x_shape) == Layout()            # a conv: NCHW
    assert layout_of(model, "blocks.0.mlp.0", torch.zeros(2, 4, 4, 16), x_shape) == Layout("nhwc")  # Linear on 4-D
    assert layout_of(model, "blocks.0.mlp.1", torch.zeros(2, 4, 4, 16), x_shape) == Layout("nhwc")  # shapes decide
    assert layout_of(model, "blocks.0.mlp.1", torch.zeros(2, 8, 4, 4), x_shape) == Layout()
    with pytest.raises(ConfigError, match="not the batch"):
        layout_of(model, "blocks.0", torch.zeros(8, 4, 8), x_shape)  # attention windows
    t = torch.arange(2 * 17 * 8.).reshape(2, 17, 8)
    v = Layout("tokens", 1, (4, 4)).spatial(t)
    assert v.shape == (2, 8, 4, 4) and v[1, 5, 2, 3] == t[1, 1 + 2 * 4 + 3, 5]  # row-major patches
    v[1, 5, 2, 3] = -1.0  # a view: writing it writes the layer output (Ablation-CAM relies on it)
    assert t[1, 1 + 2 * 4 + 3, 5] == -1.0


# ---- tiny timm models of each family ---------------------------------------------------------------

def tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5,
                             reg_tokens=2).eval()


def tiny_swin():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                           num_classes=5).eval()


def tiny_convnext():
    from timm.models.convnext import ConvNeXt

    torch.manual_seed(0)
    return ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=5).eval()


FAMILIES = {
    # (model, layer, expected map size at a 32 px input)
    "vit": (tiny_vit, "blocks.1", (4, 4)),
    "swin": (tiny_swin, "layers.1.blocks.0", (4, 4)),
    "swin-stage0": (tiny_swin, "layers.0", (8, 8)),
    "convnext": (tiny_convnext, "stages.1", (4, 4)),
    "convnext-mlp-act": (tiny_convnext, "stages.1.blocks.0.mlp.act", (4, 4)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", CAMS)
def test_cam_family_runs_on_each_timm_family(family, name):
    build, layer, size = FAMILIES[family]
    model = build()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attr = get_method(name)(**({"batch_size": 8} if name in ("scorecam", "ablationcam") else {}))(
        model, x, target=[1, 3], layer=layer)
    assert attr.values.shape == (2, *size) and attr.upsampled.shape == (2, 32, 32)
    assert np.isfinite(attr.values).all()
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", ["swin", "convnext-mlp-act"])
def test_channels_last_gradcam_equals_the_permuted_reference(family):
    """Grad-CAM on a (B, h, w, C) output = Grad-CAM computed by hand on its permutation."""
    build, layer, size = FAMILIES[family]
    model = build().double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    attr = get_method("gradcam")()(model, x, target=2, layer=layer)
    seen = {}
    module = dict(model.named_modules())[layer]
    h = module.register_forward_hook(lambda _m, _i, out: seen.setdefault("a", out))
    y = model(x)[0, 2]
    h.remove()
    a = seen["a"]
    g, = torch.autograd.grad(y, a)
    assert a.shape[1:3] == size  # channels-last
    ref = (g.mean(dim=(1, 2), keepdim=True) * a).sum(dim=3).clamp(min=0)
    np.testing.assert_allclose(attr.values, ref.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_vit_register_tokens_are_dropped():
    model = tiny_vit()
    assert model.num_prefix_tokens == 3  # class + 2 registers
    x = torch.randn(1, 3, 32, 32)
    out = {}
    h = model.blocks[1].register_forward_hook(lambda _m, _i, o: out.setdefault("a", o))
    model(x)
    h.remove()
    assert layout_of(model, "blocks.1", out["a"], x.shape) == Layout("tokens", 3, (4, 4))


def test_cam_refuses_a_transformer_block_clearly():
    model = tiny_vit()
    with pytest.raises(ConfigError, match="use gradcam"):
        get_method("cam")()(model, torch.randn(1, 3, 32, 32), target=1, layer="blocks.1")


# ---- guided rules on non-ReLU nonlinearities ---------------------------------------------------------

@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet", "guided_gradcam"])
def test_guided_rules_refuse_gelu_naming_it(name):
    model = TinyViT().eval()
    with pytest.raises(ConfigError, match=r"GELU"):
        m = get_method(name)()
        m.check(model)
    with pytest.raises(ConfigError, match=r"GELU"):
        get_method(name)()(model, torch.randn(1, 3, 16, 16), 1, **({"layer": "blocks.1"} if name == "guided_gradcam" else {}))
    assert hook_count(model) == 0


def test_guided_refuses_relus_mixed_with_other_nonlinearities_naming_both():
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), relu=nn.ReLU(), conv2=nn.Conv2d(4, 4, 3), act=nn.Hardswish(),
                                    pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 2)))
    with pytest.raises(ConfigError, match=r"Hardswish.*'act'.*ReLU"):
        get_method("guided_backprop")().check(net)
    with pytest.raises(ConfigError, match=r"Hardswish"):
        get_method("deconvnet")().check(net)


def test_guided_backprop_on_relu_only_models_is_unchanged():
    model = TinyCNN(seed=2).double()
    attr = get_method("guided_backprop")()(model, torch.randn(1, 3, 8, 8, dtype=torch.float64), 1)
    assert np.isfinite(attr.values).all()


# ---- layer=all, token_grid and preprocessing from the config ---------------------------------------

def loaded(module, name="m"):
    from cnnviz.models.loaders import LoadedModel

    return LoadedModel(module, name, "random", None)


def test_layer_all_on_a_transformer_is_its_blocks():
    from cnnviz.app.plan import expand_layer_pattern

    assert expand_layer_pattern("all", loaded(tiny_vit())) == ["blocks.0", "blocks.1"]
    assert expand_layer_pattern("all", loaded(tiny_swin())) == ["layers.0.blocks.0", "layers.1.blocks.0"]
    assert expand_layer_pattern("all", loaded(TinyViT())) == ["blocks.0", "blocks.1"]
    # CNNs keep every leaf
    cnn = expand_layer_pattern("all", loaded(TinyCNN()))
    assert cnn == ["features.0", "features.1", "features.2", "features.3", "pool", "fc"]
    convnext = expand_layer_pattern("all", loaded(tiny_convnext()))
    assert "stages.1.blocks.0.mlp.fc1" in convnext and "stages.1" not in convnext


def test_timm_preprocess_nulls_come_from_the_pretrained_config_and_explicit_values_win():
    from omegaconf import OmegaConf

    from cnnviz.app.plan import resolve_preprocess

    cfg = OmegaConf.create({"_target_": "cnnviz.models.loaders.timm_model", "arch": "vit_base_patch16_384",
                            "preprocess": {"input_size": None, "resize": "center_crop", "crop_pct": None,
                                           "interpolation": None, "mean": None, "std": [0.2, 0.2, 0.2]}})
    resolve_preprocess(cfg)
    pre = cfg.preprocess
    assert pre.input_size == 384 and pre.crop_pct == 1.0 and pre.interpolation == "bicubic"
    assert list(pre.mean) == [0.5, 0.5, 0.5] and list(pre.std) == [0.2, 0.2, 0.2]
    import timm

    model = timm.create_model("convnext_tiny", pretrained=False)
    want = timm.data.resolve_data_config({}, model=model)
    cfg.arch, cfg.preprocess.input_size, cfg.preprocess.mean, cfg.preprocess.crop_pct = "convnext_tiny", None, None, None
    resolve_preprocess(cfg)
    assert cfg.preprocess.input_size == want["input_size"][-1] and tuple(cfg.preprocess.mean) == tuple(want["mean"])
    assert cfg.preprocess.crop_pct == want["crop_pct"]


def test_non_timm_models_need_every_preprocess_value():
    from omegaconf import OmegaConf

    from cnnviz.app.plan import resolve_preprocess

    cfg = OmegaConf.create({"_target_": "cnnviz.models.loaders.torchvision_model", "arch": "resnet18",
                            "preprocess": {"input_size": None, "resize": "center_crop", "crop_pct": 0.875,
                                           "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}})
    with pytest.raises(ConfigError, match=r"model\.preprocess\.input_size"):
        resolve_preprocess(cfg)


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_vit_tiny_gradcam_layer_all_writes_one_map_per_block(tmp_path, image_cache):
    import pandas as pd

    proc = ok(run_cli(["model=timm", "model.arch=vit_tiny_patch16_224", "model.weights=null", "method=gradcam",
                       "layer=all", "image=coffee"], tmp_path, image_cache))
    rows = pd.read_csv(tmp_path / "manifest.csv")
    assert list(rows["layer"]) == [f"blocks.{i}" for i in range(12)], proc.stdout[-2000:]
    assert (rows["status"] == "ok").all()
    assert np.load(tmp_path / rows["file_npy"].iloc[0]).shape == (14, 14)
    assert "ran 1 forward" not in proc.stdout  # (no such log line; the one-pass property is tested in-process)


@pytest.mark.slow
def test_run_vit_guided_backprop_is_a_config_error_naming_gelu(tmp_path, image_cache):
    proc = run_cli(["model=timm", "model.arch=vit_tiny_patch16_224", "model.weights=null", "method=guided_backprop",
                    "image=coffee"], tmp_path, image_cache)
    assert proc.returncode == 2 and "GELU" in proc.stderr, proc.stderr[-2000:]


# ---- the config path: build_plan ---------------------------------------------------------------------

def compose_cfg(overrides=()):
    from hydra import compose, initialize_config_dir

    from cnnviz.app.schema import register_configs

    register_configs()
    conf = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_plan_for_a_vit_blocks_timm_preprocessing_and_token_grid():
    from cnnviz.app.plan import build_plan

    base = ["model=timm", "model.arch=vit_tiny_patch16_224", "model.weights=null", "image=rocket", "method=gradcam",
            "layer=all"]
    plan = build_plan(compose_cfg(base + ["model.token_grid=[14,14]", "model.preprocess.crop_pct=0.8"]))
    assert plan.layers["gradcam"] == [f"blocks.{i}" for i in range(12)]
    assert list(plan.preprocess.mean) == [0.5] * 3 and plan.preprocess.interpolation == "bicubic"
    assert plan.preprocess.input_size == 224 and plan.preprocess.crop_pct == 0.8  # the explicit value wins
    assert plan.model.module.cnnviz_token_grid == (14, 14)
    with pytest.raises(ConfigError, match=r"model\.token_grid"):
        build_plan(compose_cfg(base[:-1] + ["layer=blocks.3", "model.token_grid=[7,7]"]))


@pytest.mark.slow
def test_run_swin_and_convnext_cam_family(tmp_path, image_cache):
    """Swin's channels-last stages and ConvNeXt's stages through run.py: the gradient CAMs and Eigen-CAM at
    two layers each, CAM where its head is GAP -> linear (Swin's final norm), a clear refusal where not."""
    import pandas as pd

    family = "method=[gradcam,gradcam_plusplus,xgradcam,layercam,hirescam,eigencam,cam]"
    # one run per model: CAM reads its own layer (method.cam.layer), the gradient family the two layers
    ok(run_cli(["model=timm", "model.arch=swin_tiny_patch4_window7_224", "model.weights=null", family,
                "layer=[layers.3,norm]", "+method.cam.layer=norm", "image=coffee"], tmp_path / "swin", image_cache))
    proc = run_cli(["model=timm", "model.arch=convnext_tiny", "model.weights=null", "model.preprocess.input_size=64", family,
                    "layer=[stages.2,stages.2.blocks.0.mlp.act]", "+method.cam.layer=stages.3", "image=coffee"],
                   tmp_path / "convnext", image_cache)
    assert proc.returncode == 3 and "use gradcam" in proc.stdout + proc.stderr  # CAM's row failed, the rest ran
    for run, shape in (("swin", (7, 7)), ("convnext", (4, 4))):
        rows = pd.read_csv(tmp_path / run / "manifest.csv")
        family_rows = rows[rows["method"] != "cam"]
        assert len(family_rows) == 12 and (family_rows["status"] == "ok").all(), rows[["method", "layer", "error"]]
        assert np.load(tmp_path / run / family_rows["file_npy"].iloc[0]).shape == shape
    swin_cam = pd.read_csv(tmp_path / "swin" / "manifest.csv").query("method == 'cam'")
    assert list(swin_cam["layer"]) == ["norm"] and list(swin_cam["status"]) == ["ok"], swin_cam[["layer", "error"]]
    assert np.load(tmp_path / "swin" / swin_cam["file_npy"].iloc[0]).shape == (7, 7)
    convnext_cam = pd.read_csv(tmp_path / "convnext" / "manifest.csv").query("method == 'cam'")
    assert list(convnext_cam["layer"]) == ["stages.3"] and list(convnext_cam["status"]) == ["error"]
    assert "use gradcam" in convnext_cam["error"].iloc[0]


def test_a_wrapped_vit_is_read_from_its_own_attributes():
    """A wrapper (as a target or a detector puts around a network) has no num_prefix_tokens or
    patch_embed of its own: the layout comes from the wrapped ViT, and the map equals the unwrapped one."""
    class Wrapper(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * 2.0

    vit = tiny_vit()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    wrapped = get_method("gradcam")()(Wrapper(vit), x, target=1, layer="net.blocks.0")
    alone = get_method("gradcam")()(vit, x, target=1, layer="blocks.0")
    np.testing.assert_allclose(wrapped.values, 2.0 * alone.values, rtol=1e-5, atol=1e-7)
    assert wrapped.values.shape == (1, 4, 4) and alone.values.any()


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "resnet18"])
def test_timm_model_is_built_for_the_configured_input_size(arch):
    """A ViT fixes its token grid when built: model.preprocess.input_size=64 builds one for 64 px
    (4x4 patches); a CNN takes any size and is built as usual."""
    from cnnviz.models.loaders import timm_model

    model = timm_model(arch, None, input_size=64).module.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    if arch.startswith("vit"):
        assert tuple(model.patch_embed.grid_size) == (4, 4)
