"""The transformer techniques (attention_rollout, transformer_attribution, raw_attention) on tiny
random-init timm vision transformers, against float64 references written here by hand: the
attention probabilities recomputed from each block's qkv weights, a manual forward that keeps them
as autograd leaves for the gradients, and rollouts as explicit matrix products. Also the guest
rules (fused attention restored, no hook left, model state kept, after a normal call and after an
error), the refusal of models without attention, batches, and an end-to-end run of run.py.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import ConfigError, get_method
from cnnviz.engine import compute, compute_batch
from conftest import TinyCNN, hook_count, model_snapshot, ok, run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

timm = pytest.importorskip("timm")

NAMES = ["attention_rollout", "transformer_attribution", "raw_attention"]


def tiny_vit(seed: int = 0, depth: int = 2, img=32, patch: int = 8, classes: int = 5, scale: float = 0.4,
             **kw) -> nn.Module:
    """A timm ViT with 24-dim tokens and 3 heads, every parameter drawn N(0, scale²) (timm's own
    init gives near-uniform attention, under which wrong token bookkeeping would hardly show)."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=patch, depth=depth,
                              num_classes=classes, embed_dim=24, num_heads=3, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
    for m in attention_modules(model):
        m.fused_attn = True  # what timm picks on torch 2; the techniques must switch it off and back
    return model.eval()


def attention_modules(model):
    return [blk.attn for blk in model.blocks]


def images(n: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def method(name: str, **params):
    return get_method(name)(**params)


# --------------------------------------------------------------------------------------------
# float64 references
# --------------------------------------------------------------------------------------------

def manual_forward(model: nn.Module, x: torch.Tensor):
    """float64 logits and every block's attention probabilities (B, heads, N, N), computed by hand
    from the qkv weights: softmax(q kᵀ / √d). The probabilities are graph nodes, so
    ``torch.autograd.grad`` gives the target score's gradient with respect to them."""
    m = copy.deepcopy(model).double().eval()
    h = m.patch_embed(x.double())
    h = m._pos_embed(h)
    h = m.norm_pre(h)
    probs = []
    for blk in m.blocks:
        a = blk.attn
        t = blk.norm1(h)
        B, N, C = t.shape
        qkv = a.qkv(t).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        p = torch.softmax(q @ k.transpose(-2, -1) / a.head_dim ** 0.5, dim=-1)
        probs.append(p)
        o = (p @ v).transpose(1, 2).reshape(B, N, C)
        h = h + blk.ls1(a.proj(o))
        h = h + blk.ls2(blk.mlp(blk.norm2(h)))
    h = m.norm(h)
    return m.forward_head(h), probs


def grid_of(model, x):
    ph, pw = model.patch_embed.patch_size
    return x.shape[-2] // ph, x.shape[-1] // pw


def fuse(p: np.ndarray, how: str) -> np.ndarray:
    return {"mean": p.mean(axis=0), "max": p.max(axis=0), "min": p.min(axis=0)}[how]


def rollout_reference(probs: list[np.ndarray], how: str, discard: float) -> np.ndarray:
    """One image: Â_l = rownorm(fuse(A_l) with its lowest ``discard`` share zeroed, A[cls, cls]
    kept, + I); rollout = Â_L ··· Â_1; its class-token row."""
    n = probs[0].shape[-1]
    rollout = np.eye(n)
    for p in probs:
        a = fuse(p, how).copy()
        k = int(n * n * discard)
        if k:
            order = np.argsort(a.reshape(-1), kind="stable")[:k]
            order = order[order != 0]
            a.reshape(-1)[order] = 0.0
        a = a + np.eye(n)
        a = a / a.sum(axis=1, keepdims=True)
        rollout = a @ rollout
    return rollout[0]


def chefer_reference(probs: list[np.ndarray], grads: list[np.ndarray]) -> np.ndarray:
    """One image: R = I; per block R <- R + E_h[(∇A ⊙ A)⁺] R; the class-token row."""
    n = probs[0].shape[-1]
    R = np.eye(n)
    for p, g in zip(probs, grads):
        cam = np.clip(g * p, 0, None).mean(axis=0)
        R = R + cam @ R
    return R[0]


# --------------------------------------------------------------------------------------------
# raw attention
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block,head", [(None, None), (0, None), (1, 2), (0, 0)])
def test_raw_attention_is_softmax_qk_computed_from_the_qkv_weights(block, head):
    model, x = tiny_vit(), images()
    _, probs = manual_forward(model, x)
    p = probs[-1 if block is None else block].detach().numpy()  # (B, heads, N, N)
    expected = p.mean(axis=1) if head is None else p[:, head]
    gh, gw = grid_of(model, x)
    attr = method("raw_attention", block=block, head=head)(model, x)
    assert attr.values.shape == (2, gh, gw) and attr.upsampled.shape == (2, 32, 32)
    np.testing.assert_allclose(attr.values, expected[:, 0, 1:].reshape(2, gh, gw), rtol=1e-4, atol=1e-6)
    assert attr.target == () and attr.layer is None
    assert attr.logits.shape == (2, 5)


def test_raw_attention_refuses_a_block_or_head_out_of_range():
    model = tiny_vit()
    with pytest.raises(ConfigError, match=r"method\.raw_attention\.block.*2 blocks"):
        method("raw_attention", block=2)(model, images())
    with pytest.raises(ConfigError, match=r"method\.raw_attention\.head.*3 heads"):
        method("raw_attention", head=3)(model, images())
    assert hook_count(model) == 0


# --------------------------------------------------------------------------------------------
# attention rollout
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5])
def test_rollout_equals_a_float64_reference(how, discard):
    model, x = tiny_vit(depth=3), images()
    _, probs = manual_forward(model, x)
    gh, gw = grid_of(model, x)
    attr = method("attention_rollout", head_fusion=how, discard_ratio=discard)(model, x)
    for b in range(2):
        row = rollout_reference([p[b].detach().numpy() for p in probs], how, discard)
        np.testing.assert_allclose(attr.values[b], row[1:].reshape(gh, gw), rtol=1e-4, atol=1e-6)
    assert attr.target == ()


def test_rollout_of_one_block_is_half_the_mean_attention_plus_half_the_identity():
    """With one block, mean fusion and nothing discarded, every row of mean_h A sums to 1, so
    Â = 0.5·A + 0.5·I needs no renormalisation; the class token's row over the patches is 0.5·A[cls, patches]."""
    model, x = tiny_vit(depth=1), images()
    _, probs = manual_forward(model, x)
    mean = probs[0].detach().numpy().mean(axis=1)  # (B, N, N)
    gh, gw = grid_of(model, x)
    attr = method("attention_rollout")(model, x)
    np.testing.assert_allclose(attr.values, 0.5 * mean[:, 0, 1:].reshape(2, gh, gw), rtol=1e-4, atol=1e-6)
    # the class token keeps the other half and its own attention: the row sums to 1
    assert np.allclose(attr.values.reshape(2, -1).sum(1) + 0.5 + 0.5 * mean[:, 0, 0], 1.0, atol=1e-5)


def test_discarding_changes_the_map_and_never_the_class_tokens_own_attention():
    model, x = tiny_vit(depth=1), images(n=1)
    kept = method("attention_rollout", discard_ratio=0.0)(model, x).values
    cut = method("attention_rollout", discard_ratio=0.9)(model, x).values
    assert not np.allclose(kept, cut)
    assert (cut == 0).sum() > (kept == 0).sum()  # the weakest patch attentions are gone


# --------------------------------------------------------------------------------------------
# transformer attribution (Chefer et al. 2021b)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [[1, 4], None])
def test_transformer_attribution_equals_an_autograd_reference(target):
    model, x = tiny_vit(depth=3), images()
    logits, probs = manual_forward(model, x)
    idx = logits.argmax(1).tolist() if target is None else target
    score = logits.gather(1, torch.tensor(idx)[:, None]).sum()
    grads = torch.autograd.grad(score, probs)
    gh, gw = grid_of(model, x)
    attr = method("transformer_attribution")(model, x, target)
    assert attr.target == tuple(idx)
    np.testing.assert_allclose(attr.logits, logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    for b in range(2):
        row = chefer_reference([p[b].detach().numpy() for p in probs], [g[b].numpy() for g in grads])
        scale = np.abs(row[1:]).max()
        np.testing.assert_allclose(attr.values[b], row[1:].reshape(gh, gw), rtol=1e-3, atol=1e-5 * scale)


def test_transformer_attribution_is_class_specific():
    model, x = tiny_vit(depth=3), images(n=1)
    a = method("transformer_attribution")(model, x, 0).values
    b = method("transformer_attribution")(model, x, 3).values
    assert not np.allclose(a, b)


def test_transformer_attribution_refuses_a_target_out_of_range_and_leaves_no_hook():
    model = tiny_vit()
    with pytest.raises(ConfigError, match="out of range"):
        method("transformer_attribution")(model, images(), [0, 9])
    assert hook_count(model) == 0 and all(m.fused_attn for m in attention_modules(model))


# --------------------------------------------------------------------------------------------
# the model as found: fused attention, hooks, state
# --------------------------------------------------------------------------------------------

class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom in the head")


def snapshot(model: nn.Module) -> dict:
    return {**model_snapshot(model),
            "dicts": {n: sorted(vars(m)) for n, m in model.named_modules()},
            "fused": [(m.fused_attn, "fused_attn" in vars(m)) for m in attention_modules(model)]}


def assert_same(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "modules", "dicts", "fused", "hooks"):
        assert after[key] == before[key], key
    for n, g in before["grad"].items():
        assert (after["grad"][n] is None) if g is None else torch.equal(after["grad"][n], g), n
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


@pytest.mark.parametrize("fused, frozen, requires_grad", [
    (True, "none", True), (False, "some", False), (True, "all", False), (False, "none", True)])
@pytest.mark.parametrize("name", NAMES)
def test_model_and_input_left_as_found_after_a_normal_call(name, fused, frozen, requires_grad):
    model = tiny_vit().train()
    for m in attention_modules(model):
        m.fused_attn = fused
    params = dict(model.named_parameters())
    for n in {"none": [], "some": ["blocks.0.attn.qkv.weight", "head.bias"], "all": list(params)}[frozen]:
        params[n].requires_grad_(False)
    model.head.weight.grad = torch.full_like(model.head.weight, 3.0)  # a grad the user already has
    before = snapshot(model)
    x = images().requires_grad_(requires_grad)
    kept = x.detach().clone()
    attr = method(name)(model, x, [1, 4])
    assert np.abs(attr.values).max() > 0 and np.isfinite(attr.values).all()  # frozen parameters do not stop it
    assert_same(before, snapshot(model))
    assert x.grad is None and x.requires_grad is requires_grad and torch.equal(x.detach(), kept)


@pytest.mark.parametrize("name", NAMES)
def test_the_attribution_fields(name):
    m = method(name)
    model, x = tiny_vit(), images()
    attr = m(model, x, [1, 4])
    assert attr.method == name and attr.layer is None and attr.params == m.params()
    assert attr.target == ((1, 4) if get_method(name).uses_target else ())
    assert attr.is_cam and attr.values.shape == (2, 4, 4) and attr.upsampled.shape == (2, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(attr.logits, model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert get_method(name).model_family == "vision_transformer" and not get_method(name).needs_layer


@pytest.mark.parametrize("name", NAMES)
def test_model_left_as_found_after_an_error_mid_forward(name):
    model = tiny_vit().train()
    good = method(name)(model, images(), [1, 4]).values
    model.head = Exploding()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom in the head"):
        method(name)(model, images(), [1, 4])
    assert_same(before, snapshot(model))
    assert all(m.fused_attn for m in attention_modules(model))
    healthy = tiny_vit()
    np.testing.assert_array_equal(method(name)(healthy, images(), [1, 4]).values, good)


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_whatever_the_model_mode(name):
    model = tiny_vit(attn_drop_rate=0.5, proj_drop_rate=0.5)
    evaluated = method(name)(model, images(), [1, 4])
    trained = method(name)(model.train(), images(), [1, 4])
    assert model.training
    np.testing.assert_array_equal(trained.values, evaluated.values)


# --------------------------------------------------------------------------------------------
# models without attention, token grids
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_a_cnn_is_refused_at_check_time_naming_what_is_needed(name):
    model = TinyCNN()
    with pytest.raises(ConfigError, match=r"vision transformer.*blocks\.\*\.attn.*TinyCNN has none"):
        method(name).check(model)
    with pytest.raises(ConfigError, match="vision transformer"):
        method(name)(model, torch.randn(1, 3, 8, 8), 0)
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", NAMES)
def test_swin_windowed_attention_is_refused_at_check_time(name):
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
                              embed_dim=12, depths=(1, 1), num_heads=(1, 2), num_classes=5)
    with pytest.raises(ConfigError, match=r"windowed attention \(layers\.0\.blocks\.0\.attn"):
        method(name).check(model)


@pytest.mark.parametrize("name", NAMES)
def test_a_vit_without_a_class_token_is_refused(name):
    model = tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(ConfigError, match="no class token"):
        method(name)(model, images(), [1, 4])
    assert hook_count(model) == 0 and all(m.fused_attn for m in attention_modules(model))


@pytest.mark.parametrize("name", NAMES)
def test_a_non_square_grid_follows_the_patch_size(name):
    model, x = tiny_vit(img=(24, 40)), images(h=24, w=40)
    attr = method(name)(model, x, [0, 1])
    assert attr.values.shape == (2, 3, 5) and attr.upsampled.shape == (2, 24, 40)


def test_a_dynamic_size_vit_lays_its_tokens_on_the_grid_of_the_input_not_of_its_build():
    model, x = tiny_vit(dynamic_img_size=True), images(h=48, w=32)  # built for 32x32: grid_size stays (4, 4)
    assert tuple(model.patch_embed.grid_size) == (4, 4)
    _, probs = manual_forward(model, x)
    attr = method("raw_attention")(model, x)
    assert attr.values.shape == (2, 6, 4)
    np.testing.assert_allclose(attr.values, probs[-1].detach().numpy().mean(axis=1)[:, 0, 1:].reshape(2, 6, 4),
                               rtol=1e-4, atol=1e-6)


def test_a_distillation_token_is_dropped_from_the_map():
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=1, embed_dim=24, num_heads=3, num_classes=5).eval()
    assert model.num_prefix_tokens == 2
    x = images()
    _, probs = manual_forward(model, x)
    mean = probs[0].detach().numpy().mean(axis=1)
    attr = method("attention_rollout")(model, x)
    np.testing.assert_allclose(attr.values, 0.5 * mean[:, 0, 2:].reshape(2, 4, 4), rtol=1e-4, atol=1e-6)


class Wrapped(nn.Module):
    """A ViT inside another module, as a user's wrapper hides it: the attention is found by
    name (``net.blocks.*.attn``), the token layout is not."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def test_a_grid_that_cannot_be_inferred_names_model_token_grid_and_a_set_grid_is_used(monkeypatch):
    from cnnviz.core import tokens
    from cnnviz.core.tokens import token_grid

    vit, x = tiny_vit(img=(16, 24)), images(h=16, w=24)
    expected = method("raw_attention")(vit, x).values
    assert expected.shape == (2, 2, 3)
    model = Wrapped(vit)
    # a model with neither a patch embedding to read nor a token count of one grid with the input's
    # aspect ratio (the wrapped ViT has both; the two readings are switched off)...
    monkeypatch.setattr(tokens, "_patch_grid", lambda *a: None)
    monkeypatch.setattr(tokens, "_factor_grid", lambda *a: None)
    with pytest.raises(ConfigError, match=r"model\.token_grid"):
        method("raw_attention")(model, x)
    assert hook_count(model) == 0 and all(m.fused_attn for m in attention_modules(vit))
    with token_grid(model, (2, 3)):  # ...until it is set
        np.testing.assert_array_equal(method("raw_attention")(model, x).values, expected)


# --------------------------------------------------------------------------------------------
# batches: row b equals image b alone
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_a_batch_of_three_equals_three_single_calls(name):
    model, x, targets = tiny_vit(), images(n=3), [0, 3, 1]
    x[1] *= 3.0
    batch = compute_batch({name: method(name)}, model, x, targets, {name: []})[name]
    for i, t in enumerate(targets):
        single = compute(method(name), model, x[i:i + 1], t, [])[0]
        row = batch[i]
        assert row.error is None, row.error
        a = row.attributions[0]
        scale = float(np.abs(single.values).max()) or 1.0
        np.testing.assert_allclose(a.values, single.values, rtol=1e-4, atol=1e-6 * scale)
        np.testing.assert_allclose(a.upsampled, single.upsampled, rtol=1e-4, atol=1e-6 * scale)
        assert a.target == single.target and a.warnings == single.warnings


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit_run(tmp_path_factory, image_cache):
    """One run.py call for both techniques: one process and one model build instead of two."""
    run_dir = tmp_path_factory.mktemp("vit") / "run"
    ok(run_cli(["model=timm", "model.arch=vit_tiny_patch16_224", "model.weights=null",
                "method=[attention_rollout,transformer_attribution]", "image=cat_dog"], run_dir, image_cache))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attention_rollout", "transformer_attribution"])
def test_run_py_writes_maps_for_a_timm_vit(name, vit_run):
    run_dir = vit_run
    pngs = sorted(p.name for p in run_dir.rglob("*.png") if name in p.name)
    assert pngs, sorted(p.name for p in run_dir.rglob("*"))
