"""Contract tests generated from the registry (STYLE.md point 13; timm parametrizes over
``list_models()``): every registered technique, run on TinyCNN, must give the documented shapes
and fields, leave no hooks and no trace on the model or the input — after a normal run and after an
error — and give the same result with ``ReLU(inplace=True)`` and ``inplace=False``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import Attribution, ConfigError, get_method, list_methods
from conftest import TinyCNN, any_model, hook_count, model_snapshot, tiny_method

ALL = list_methods()
METHODS = [n for n in ALL if any_model(n)]  # those that run on TinyCNN
LAYER = "features.3"
B, H, W = 2, 10, 12
TARGET = [1, 4]


def method(name: str):
    return tiny_method(name)


def layer_for(name: str, layer: str = LAYER):
    return layer if get_method(name).needs_layer else None


def inputs(seed: int = 0, batch: int = B) -> torch.Tensor:
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))


def run(name: str, model: nn.Module, x: torch.Tensor, target=TARGET, layer: str = LAYER) -> Attribution:
    return method(name)(model, x, target, layer=layer_for(name, layer))


class Exploding(TinyCNN):
    """Fails after the hooked layer (and after every ReLU) has run."""

    def forward(self, x):
        self.features(x)
        raise RuntimeError("boom after features")


class Stochastic(TinyCNN):
    """TinyCNN with batch norm and dropout before the classifier: in train mode the output
    depends on the batch and on chance, and a forward updates the running statistics."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.norm = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(self.norm(self.pool(self.features(x)).flatten(1))))


snapshot = model_snapshot


def assert_same_state(before: dict, after: dict) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["modules"] == before["modules"]  # no module swapped in or out
    assert after["hooks"] == before["hooks"] == 0
    for n, g in before["grad"].items():
        if g is None:
            assert after["grad"][n] is None, f"{n}.grad was set"
        else:
            assert torch.equal(after["grad"][n], g), f"{n}.grad changed"
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"


@pytest.mark.parametrize("name", METHODS)
def test_shapes_and_finite_values(name):
    model, x = TinyCNN(), inputs()
    attr = run(name, model, x)
    assert isinstance(attr, Attribution)
    if get_method(name).map_space == "layer":
        assert attr.values.shape == (B, H, W)  # TinyCNN keeps the resolution at features.3
        assert attr.upsampled.shape == (B, H, W)
        assert attr.is_cam and np.isfinite(attr.upsampled).all()
    else:
        assert attr.values.shape == (B, 3, H, W)
        assert attr.upsampled is None and not attr.is_cam
    assert np.isfinite(attr.values).all()
    assert np.abs(attr.values).max() > 0
    assert attr.logits.shape == (B, 5)
    with torch.no_grad():
        np.testing.assert_allclose(attr.logits, model(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attr.probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_attribution_fields(name):
    m = method(name)
    layer = layer_for(name)
    attr = m(TinyCNN(), inputs(), TARGET, layer=layer)
    assert attr.method == name
    assert attr.target == (tuple(TARGET) if get_method(name).uses_target else ())
    assert attr.layer == layer
    assert attr.params == m.params()
    one = m(TinyCNN(), inputs(batch=1), 3, layer=layer)
    assert one.target == ((3,) if get_method(name).uses_target else ())


@pytest.mark.parametrize("name", METHODS)
def test_no_hooks_left_after_a_normal_run(name):
    model = TinyCNN()
    assert hook_count(model) == 0
    run(name, model, inputs())
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", METHODS)
def test_no_hooks_and_state_restored_after_an_error_mid_forward(name):
    model = Exploding().train()
    model.features[0].weight.requires_grad_(False)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom after features"):
        run(name, model, inputs())
    assert_same_state(before, snapshot(model))
    # and the model is usable afterwards: no guided rule or capture hook lingers
    healthy = TinyCNN()
    healthy.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(run(name, healthy, inputs()).values, run(name, TinyCNN(), inputs()).values)


@pytest.mark.parametrize("name", [n for n in METHODS if get_method(n).uses_target])
def test_no_hooks_left_after_a_target_error(name):
    model = TinyCNN()
    with pytest.raises(ConfigError, match="out of range"):
        run(name, model, inputs(), target=[0, 9])
    assert hook_count(model) == 0
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("frozen", ["none", "some", "all"])
@pytest.mark.parametrize("name", METHODS)
def test_model_state_unchanged(name, frozen):
    model = TinyCNN().train()
    params = dict(model.named_parameters())
    for n in {"none": [], "some": ["features.0.weight", "fc.bias"], "all": list(params)}[frozen]:
        params[n].requires_grad_(False)
    params["fc.weight"].grad = torch.full_like(params["fc.weight"], 3.0)  # a grad the user already has
    before = snapshot(model)
    attr = run(name, model, inputs())
    assert np.abs(attr.values).max() > 0  # frozen parameters do not stop the attribution
    assert_same_state(before, snapshot(model))
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("name", METHODS)
def test_runs_in_eval_mode_whatever_the_model_mode(name):
    model = Stochastic()
    evaluated = run(name, model.eval(), inputs())
    model.train()
    before = snapshot(model)
    trained = run(name, model, inputs())
    assert_same_state(before, snapshot(model))  # running statistics untouched, still in train mode
    assert model.training and model.drop.training and model.norm.training
    np.testing.assert_array_equal(trained.values, evaluated.values)
    np.testing.assert_array_equal(trained.logits, evaluated.logits)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("name", METHODS)
def test_input_not_modified(name, requires_grad):
    x = inputs().requires_grad_(requires_grad)
    kept = x.detach().clone()
    run(name, TinyCNN(), x)
    assert x.requires_grad is requires_grad
    assert x.grad is None
    assert torch.equal(x.detach(), kept)


# a layer method is also asked for the conv output that an in-place ReLU then overwrites
INPLACE_CASES = [(n, LAYER) for n in METHODS] + [(n, "features.2") for n in METHODS if get_method(n).needs_layer]


@pytest.mark.parametrize("name,layer", INPLACE_CASES)
def test_same_result_with_inplace_relu(name, layer):
    x = inputs(seed=1)
    try:
        plain = run(name, TinyCNN(inplace=False), x, layer=layer)
    except ConfigError as e:  # e.g. cam at a conv that does not feed GAP -> linear directly
        with pytest.raises(ConfigError) as again:
            run(name, TinyCNN(inplace=True), x, layer=layer)
        assert str(again.value) == str(e)
        return
    inplace = run(name, TinyCNN(inplace=True), x, layer=layer)
    np.testing.assert_array_equal(inplace.values, plain.values)
    np.testing.assert_array_equal(inplace.logits, plain.logits)
    if plain.upsampled is not None:
        np.testing.assert_array_equal(inplace.upsampled, plain.upsampled)


LAYER_METHODS = [n for n in METHODS if get_method(n).needs_layer]


# a technique that explains one unit of a layer (uses_target False) accepts dense layers too
@pytest.mark.parametrize("name", [n for n in LAYER_METHODS if get_method(n).uses_target])
def test_non_4d_layer_is_a_config_error_naming_the_shape(name):
    model = TinyCNN()
    with pytest.raises(ConfigError) as e:
        run(name, model, inputs(batch=1), target=0, layer="fc")
    msg = str(e.value)
    assert "'fc'" in msg and "(1, 5)" in msg and "layer=" in msg
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_unknown_layer_suggests_close_matches(name):
    with pytest.raises(ConfigError, match="close matches: features.3"):
        run(name, TinyCNN(), inputs(), layer="feature.3")


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_missing_layer_is_a_config_error(name):
    with pytest.raises(ConfigError, match="needs a layer"):
        method(name)(TinyCNN(), inputs(), 0)


@pytest.mark.parametrize("name", METHODS)
def test_input_must_be_4d(name):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        method(name)(TinyCNN(), torch.randn(3, H, W), 0, layer=layer_for(name))


@pytest.mark.parametrize("name", [n for n in ALL if not any_model(n)])
def test_a_technique_for_another_model_family_refuses_tinycnn_at_check(name):
    model = TinyCNN()
    with pytest.raises(ConfigError, match=get_method(name).model_family.replace("_", " ")):
        method(name).check(model)
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", ALL)
def test_render_kinds_are_known_renderers(name):
    from cnnviz.output.render import RENDERERS

    cls = get_method(name)
    assert (cls.renders or cls.writes) and set(cls.renders) <= set(RENDERERS)
    cam_kinds = {k for k in cls.renders if k.startswith("cam")}
    assert bool(cam_kinds) == (cls.map_space == "layer")  # a CAM is rendered as a map, a gradient as an image


@pytest.mark.parametrize("name", [n for n in METHODS if get_method(n).writes])
def test_declared_outputs_are_in_the_extras_and_encode(name):
    from cnnviz.output.writers import extra_files, parse

    cls = get_method(name)
    attr = run(name, TinyCNN(), inputs())
    keys = [parse(spec)[1] for spec in cls.writes]
    assert set(keys) <= set(attr.extras), f"{name} declares {keys} but returns extras {sorted(attr.extras)}"
    files = list(extra_files(cls.writes, attr.extras))
    assert len(files) == len(cls.writes) and all(data for _, _, data in files)


# ============================================================================================
# The protocol (cnnviz/methods/README.md): declared traits, not identity checks
# ============================================================================================

from cnnviz.core.passes import PLAIN, BackwardRule, PassRequest  # noqa: E402
from cnnviz.engine import compute_group  # noqa: E402
from cnnviz.methods.base import CAMMethod, GradientMethod, Method, PerturbationMethod  # noqa: E402


@pytest.mark.parametrize("name", ALL)
def test_every_technique_declares_where_its_map_lives(name):
    cls = get_method(name)
    assert cls.map_space in ("input", "layer")
    # a layer map is exactly what a CAM makes; everything else is shaped like the input
    assert (cls.map_space == "layer") == issubclass(cls, CAMMethod)


@pytest.mark.parametrize("name", ALL)
def test_a_technique_that_does_not_share_passes_asks_the_engine_for_none(name):
    m = method(name)
    if not m.shares_passes:
        assert m.pass_requests([LAYER] if m.needs_layer else []) == []


def test_occlusion_is_a_perturbation_not_a_gradient():
    cls = get_method("occlusion")
    assert issubclass(cls, PerturbationMethod) and not issubclass(cls, GradientMethod)
    assert cls.many_passes and not cls.shares_passes and cls.map_space == "input"


def test_a_misspelt_space_is_refused_where_the_class_is_written():
    with pytest.raises(TypeError, match="map_space must be one of input, layer"):
        class Wrong(Method):  # noqa: F841
            map_space = "cam"


def test_backward_rules_are_values_keying_one_pass():
    assert BackwardRule() == PLAIN and PLAIN.plain
    assert BackwardRule("guided", "features") == BackwardRule("guided", "features")
    assert len({BackwardRule("guided"), BackwardRule("guided"), BackwardRule("deconvnet"), PLAIN}) == 3
    with pytest.raises(Exception):
        PLAIN.relu = "guided"  # frozen: a pass key cannot change under the engine
    with pytest.raises(ValueError, match="one of plain, guided, deconvnet"):
        BackwardRule("guidde")
    with pytest.raises(ValueError, match="only_under"):
        BackwardRule("plain", "features")
    assert get_method("guided_backprop")(only_under="features").pass_requests([]) == [
        PassRequest(BackwardRule("guided", "features"), (), True)]


def test_the_engine_follows_the_declared_trait_not_the_class_layout():
    """A subclass of a sharing technique that computes on its own says so, and the engine calls its
    ``attribute`` (before, an identity check on ``attribute`` decided)."""
    vanilla = get_method("vanilla_backprop")

    class Doubled(vanilla):
        shares_passes = False

        def attribute(self, model, x, target, layer):
            a = vanilla()(model, x, target)
            return Attribution(method="doubled", values=2 * a.values, logits=a.logits, target=a.target)

    model, x = TinyCNN().eval(), inputs()
    out = compute_group({"v": vanilla(), "d": Doubled()}, model, x, TARGET, {"v": [], "d": []})
    np.testing.assert_array_equal(out["d"].attributions[0].values, 2 * out["v"].attributions[0].values)


@pytest.mark.parametrize("name, params, concurrent", [
    ("vanilla_backprop", {}, True),
    ("integrated_gradients", {}, True),
    ("grad_times_image", {"base": "guided"}, False),
    ("occlusion", {}, False),
    ("gradcam", {}, False),
])
def test_concurrency_is_declared(name, params, concurrent):
    assert get_method(name)(**params).concurrent() is concurrent
