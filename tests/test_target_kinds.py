"""Target kinds beyond a class logit (cnnviz.models.outputs): a continuous output, the similarity to
a reference image, one output of a model returning several — analytic expectations on tiny
hand-built models, the strict registry, config parsing, and one end-to-end run."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from cnnviz import explain
from cnnviz.core.errors import ConfigError
from cnnviz.core.targets import OutputScore
from cnnviz.engine import compute, compute_batch
from cnnviz.methods import get_method
from cnnviz.models.outputs import (TARGET_KINDS, SelectOutput, SimilarTo, resolve_target, split_target_kind,
                                   target_kind)

from conftest import TinyCNN, ok, run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

SHAPE = (3, 4, 4)
N = 3 * 4 * 4


def seeded(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def linear(n_in: int, n_out: int, seed: int, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(n_in, n_out, bias=bias).double()
    with torch.no_grad():
        lin.weight.copy_(seeded(seed, n_out, n_in))
        if bias:
            lin.bias.copy_(seeded(seed + 1, n_out))
    return lin


def vanilla(model, x, target) -> np.ndarray:
    return explain(model, x, method="vanilla_backprop", target=target).attributions[0].values[0]


# --- regression: {output: k} ------------------------------------------------------------------


@pytest.fixture
def regression():
    return nn.Sequential(nn.Flatten(), linear(N, 5, seed=1))


@pytest.mark.parametrize("k", [0, 3])
def test_gradient_of_a_regression_output_is_its_weight_row(regression, k):
    x = seeded(7, 1, *SHAPE)
    got = vanilla(regression, x, {"output": k})
    want = regression[1].weight[k].detach().reshape(SHAPE).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_regression_row_records_the_value_not_a_class(regression, tmp_path):
    x = seeded(7, 1, *SHAPE)
    ex = explain(regression, x, method="vanilla_backprop", target={"output": 3})
    row = ex.rows(tmp_path)[0]
    value = float(regression(x)[0, 3].detach())
    assert row["target"] == 3 and row["target_kind"] == "output" and row["target_name"] == "output 3"
    assert row["target_value"] == pytest.approx(value, rel=1e-12)
    # no softmax over continuous outputs: no probability, no predicted class
    assert row["target_prob"] is None and row["predicted"] is None and row["predicted_prob"] is None


def test_regression_output_out_of_range_names_the_key(regression):
    with pytest.raises(ConfigError, match=r"target.output: 7 is out of range: the model returns 5 outputs"):
        explain(regression, seeded(7, 1, *SHAPE), method="vanilla_backprop", target={"output": 7})


def test_scorecam_weighs_a_regression_output_by_its_value_not_a_softmax():
    """A callable target is a raw score: on a one-output model a softmax would be 1 for every
    masked copy, and every channel would get the same weight."""
    torch.manual_seed(0)
    net = TinyCNN(classes=1).double()
    x = seeded(3, 1, 3, 8, 8)
    by_output = explain(net, x, method="scorecam", layer="features.3", target={"output": 0}).attributions[0].values
    by_callable = explain(net, x, method="scorecam", layer="features.3", target=lambda out: out[:, 0]).attributions[0].values
    np.testing.assert_allclose(by_output, by_callable, rtol=1e-12, atol=1e-12)
    softmaxed = explain(net, x, method="scorecam", layer="features.3", target=0).attributions[0].values
    assert not np.allclose(by_output, softmaxed)


# --- similarity: {similar_to: image} ----------------------------------------------------------


def cosine_gradient(W: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """d/dx cos(Wx, Wr) in closed form: W^T (b / (|a||b|) - (a.b) a / (|a|^3 |b|)), a = Wx, b = Wr."""
    a, b = W @ x, W @ r
    na, nb = a.norm(), b.norm()
    return W.T @ (b / (na * nb) - (a @ b) * a / (na ** 3 * nb))


@pytest.mark.parametrize("form", ["last_linear_input", "layer"])
def test_similarity_gradient_matches_the_closed_form(form):
    embed = linear(N, 6, seed=2, bias=False)
    if form == "last_linear_input":  # torchvision-style: the pooled features are the head's input
        model, extra = nn.Sequential(nn.Flatten(), embed, linear(6, 4, seed=3)), {}
    else:  # no head: the embedding module named by target.layer
        model, extra = nn.Sequential(nn.Flatten(), embed), {"layer": "1"}
    x, r = seeded(7, 1, *SHAPE), seeded(8, 1, *SHAPE)
    got = vanilla(model, x, {"similar_to": r, **extra})
    want = cosine_gradient(embed.weight.detach(), x.flatten(), r.flatten()).reshape(SHAPE).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_similarity_row_records_the_cosine(tmp_path):
    embed = linear(N, 6, seed=2, bias=False)
    model = nn.Sequential(nn.Flatten(), embed, linear(6, 4, seed=3))
    x, r = seeded(7, 1, *SHAPE), seeded(8, 1, *SHAPE)
    row = explain(model, x, method="vanilla_backprop", target={"similar_to": r}).rows(tmp_path)[0]
    a, b = embed(x.flatten(1)), embed(r.flatten(1))
    assert row["target_kind"] == "similar_to"
    assert row["target_value"] == pytest.approx(float(torch.cosine_similarity(a, b)[0].detach()), rel=1e-12)
    assert row["target_prob"] is None and row["predicted"] is None
    same = explain(model, x, method="vanilla_backprop", target={"similar_to": x}).rows(tmp_path)[0]
    assert same["target_value"] == pytest.approx(1.0, abs=1e-12)


def test_similarity_of_a_timm_model_uses_its_pre_logits_features():
    import timm

    net = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()
    x, r = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    wrapped = SimilarTo(net, r)
    assert wrapped.source == "timm"
    with torch.no_grad():
        e = lambda t: net.forward_head(net.forward_features(t), pre_logits=True)  # noqa: E731
        want = torch.cosine_similarity(e(x), e(r))
        assert torch.allclose(wrapped(x)[:, 0], want, atol=1e-6)
    # layer names are the network's own, and nothing is listed twice
    assert [n for n, _ in wrapped.named_modules()][1:] == [n for n, _ in net.named_modules()][1:]


def test_similarity_from_an_image_file_is_preprocessed_like_the_input(tmp_path):
    net = TinyCNN().eval()
    picture = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    path = tmp_path / "ref.png"
    Image.fromarray(picture).save(path)
    ex = explain(net, path, method="gradcam", layer="features.2", target={"similar_to": str(path)})
    row = ex.rows(tmp_path / "out")[0]
    assert row["target_value"] == pytest.approx(1.0, abs=1e-5)  # the input is its own reference
    assert row["target_name"] == "similar_to ref.png"


def test_similarity_without_pooled_features_names_target_layer(tmp_path):
    convs = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ConfigError, match=r"target=\{similar_to: \.\.\., layer: <dotted module name>\}"):
        explain(convs, torch.randn(1, 3, 8, 8), method="vanilla_backprop", target={"similar_to": torch.randn(1, 3, 8, 8)})
    # naming it works: a 4D output is averaged over space; an in-place op after it changes nothing
    x, r = seeded(1, 1, 3, 8, 8), seeded(2, 1, 3, 8, 8)
    maps = []
    for inplace in (False, True):
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=inplace), nn.Conv2d(4, 4, 1), nn.ReLU(inplace=inplace))
        net.load_state_dict(convs_state(seed=4))
        net.double()
        maps.append(vanilla(net, x, {"similar_to": r, "layer": "2"}))
        e = lambda t: net[2](torch.relu(net[0](t))).mean(dim=(2, 3))  # noqa: E731
        got = explain(net, x, method="vanilla_backprop", target={"similar_to": r, "layer": "2"}).rows(tmp_path)[0]
        assert got["target_value"] == pytest.approx(float(torch.cosine_similarity(e(x), e(r))[0].detach()), rel=1e-12)
    np.testing.assert_array_equal(maps[0], maps[1])
    with pytest.raises(ConfigError, match=r"target.layer: layer '9' not found"):
        explain(convs, torch.randn(1, 3, 8, 8), target={"similar_to": torch.randn(1, 3, 8, 8), "layer": "9"})


def convs_state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = {"0.weight": (4, 3, 3, 3), "0.bias": (4,), "2.weight": (4, 4, 1, 1), "2.bias": (4,)}
    return {k: torch.randn(*v, generator=g) for k, v in shapes.items()}


def test_explain_takes_one_target_kind_per_call(regression):
    with pytest.raises(ValueError, match="one target per call, got 2"):
        explain(regression, seeded(7, 1, *SHAPE), method="vanilla_backprop", target=[{"output": 0}, {"output": 1}])


def test_similarity_reference_file_missing_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"target.similar_to: image file .* does not exist"):
        explain(TinyCNN(), torch.randn(1, 3, 8, 8), target={"similar_to": str(tmp_path / "nope.png")})


# --- dict / tuple outputs: {output: name_or_index, class: c} ---------------------------------


class TwoHeads(nn.Module):
    """TinyCNN's features with two heads, returned as a dict (or a tuple)."""

    def __init__(self, as_tuple: bool = False):
        super().__init__()
        base = TinyCNN(classes=4)
        self.features, self.pool = base.features, base.pool
        self.a, self.b = nn.Linear(6, 3), base.fc
        self.as_tuple = as_tuple

    def forward(self, x):
        f = self.pool(self.features(x)).flatten(1)
        return (self.a(f), self.b(f)) if self.as_tuple else {"a": self.a(f), "b": self.b(f)}


class PlainB(nn.Module):
    def __init__(self, two: TwoHeads):
        super().__init__()
        self.features, self.pool, self.b = two.features, two.pool, two.b

    def forward(self, x):
        return self.b(self.pool(self.features(x)).flatten(1))


@pytest.mark.parametrize("method,layer", [("gradcam", "features.2"), ("vanilla_backprop", None)])
@pytest.mark.parametrize("as_tuple", [False, True])
def test_one_output_of_a_dict_model_equals_the_plain_model(method, layer, as_tuple):
    two = TwoHeads(as_tuple).double()
    x = seeded(5, 1, 3, 8, 8)
    key = 1 if as_tuple else "b"
    got = explain(two, x, method=method, layer=layer, target={"output": key, "class": 2}).attributions[0]
    want = explain(PlainB(two), x, method=method, layer=layer, target=2).attributions[0]
    np.testing.assert_allclose(got.values, want.values, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-12)
    assert got.target == want.target == (2,)


def test_dict_output_errors_name_the_output():
    two = TwoHeads()
    with pytest.raises(ConfigError, match=r"target.output: 'c' is not an output of the model.*keys a, b"):
        explain(two, torch.randn(1, 3, 8, 8), target={"output": "c", "class": 0})
    with pytest.raises(ConfigError, match=r"target.output: 7 is out of range: the model returns 2 outputs"):
        explain(TwoHeads(as_tuple=True), torch.randn(1, 3, 8, 8), target={"output": 7, "class": 0})
    with pytest.raises(ConfigError, match=r"name the output and a class"):
        explain(two, torch.randn(1, 3, 8, 8), target={"output": 1})


def test_wrappers_keep_the_user_model_as_it_was():
    two = TwoHeads().train()
    wrapped = SelectOutput(two, "b")
    assert wrapped.training and two.training
    before = copy.deepcopy(two.state_dict())
    explain(two, torch.randn(1, 3, 8, 8), method="gradcam", layer="features.2", target={"output": "b", "class": 1})
    assert two.training and all(m.training for m in two.modules())
    assert all(torch.equal(before[k], v) for k, v in two.state_dict().items())
    assert all(p.grad is None for p in two.parameters())


def test_fast_copy_folds_batchnorms_that_are_direct_children():
    """The wrapper shares the network's children: a folded top-level BatchNorm reaches the network's
    own forward, so the fast copy matches and is used."""
    from cnnviz.speed import fastpath

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 8, 8)
    wrapped = SimilarTo(net, torch.randn(1, 3, 8, 8))
    with fastpath.using(True):
        fast, _ = fastpath.fast_model(wrapped, x)
    assert fast is not wrapped
    assert torch.allclose(fast(x), wrapped(x), atol=1e-5)


# --- the registry and config parsing ----------------------------------------------------------


def test_registry_is_strict():
    assert {"output", "similar_to"} <= set(TARGET_KINDS.names())
    with pytest.raises(ValueError, match="already registered"):
        target_kind("output")(type("Other", (), {"__module__": __name__}))
    with pytest.raises(ConfigError, match=r"target.simlar_to: unknown target kind; close matches: similar_to"):
        split_target_kind({"simlar_to": "x.png"})
    with pytest.raises(ConfigError, match=r"target.clas: not a key of a output target; close matches: class"):
        split_target_kind({"output": 1, "clas": 2})


def test_split_leaves_other_targets_alone():
    for t in (None, 3, [1, 2], "top1", {"class": 15, "region": "all"}):
        assert split_target_kind(t) == (t, None)
    _, (kind, specs) = split_target_kind([{"output": 0}, {"output": 2}])
    assert kind.name == "output" and specs == [{"output": 0}, {"output": 2}]
    with pytest.raises(ConfigError, match="cannot be mixed"):
        split_target_kind([{"output": 0}, 3])


def test_several_references_are_one_model_and_one_target_each():
    model = nn.Sequential(nn.Flatten(), linear(N, 6, seed=2, bias=False), linear(6, 4, seed=3))
    r1, r2, x = seeded(8, 1, *SHAPE), seeded(9, 1, *SHAPE), seeded(7, 1, *SHAPE)
    resolved = resolve_target(model, [{"similar_to": r1}, {"similar_to": r2}], lambda r: r, lambda net: net(x))
    assert isinstance(resolved.module, SimilarTo)
    assert [t.index for t in resolved.targets] == [0, 1]
    out = resolved.module(x)
    single = resolve_target(model, {"similar_to": r2}, lambda r: r, lambda net: net(x)).module(x)
    assert out.shape == (1, 2) and torch.allclose(out[:, 1], single[:, 0], rtol=1e-12)


def test_a_batch_with_an_output_target_equals_each_image_alone(regression):
    x = seeded(4, 3, *SHAPE)
    score = OutputScore(2, "output", "output 2", "{output: 2}")
    methods = {"vanilla_backprop": get_method("vanilla_backprop")()}
    batch = compute_batch(methods, regression, x, [score] * 3, {"vanilla_backprop": []})["vanilla_backprop"]
    for i, result in enumerate(batch):
        alone = compute(methods["vanilla_backprop"], regression, x[i:i + 1], score, [])[0]
        np.testing.assert_allclose(result.attributions[0].values, alone.values, rtol=1e-12)


def test_plan_parses_an_output_target(tmp_path):
    from hydra import compose, initialize_config_dir

    from cnnviz.app.plan import build_plan
    from cnnviz.app.schema import register_configs

    from test_models import CONF

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=efficientnet_lite0", "model.weights=null", "model.preprocess.input_size=64", "target={output: 3}"])
    plan = build_plan(cfg)
    assert plan.targets == [OutputScore(3, "output", "output 3", "{output: 3}")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=efficientnet_lite0", "model.weights=null", "model.preprocess.input_size=64", "target={output: 1000}"])
    with pytest.raises(ConfigError, match=r"target.output: 1000 is out of range: the model returns 1000 outputs"):
        build_plan(cfg)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=efficientnet_lite0", "model.weights=null", "model.preprocess.input_size=64",
            f"target={{similar_to: {tmp_path / 'missing.png'}}}"])
    with pytest.raises(ConfigError, match=r"target.similar_to: image file .*missing.png' does not exist"):
        build_plan(cfg)


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_similar_to_writes_maps_and_records_the_kind(tmp_path, image_cache):
    ref = tmp_path / "ref.png"
    Image.fromarray((np.random.default_rng(1).random((80, 80, 3)) * 255).astype(np.uint8)).save(ref)
    run_dir = tmp_path / "run"
    ok(run_cli(["model=efficientnet_lite0", "model.weights=null", "model.preprocess.input_size=64", "image=coffee",
                "method=gradcam", f"target={{similar_to: {ref}}}"], run_dir, image_cache))
    df = pd.read_csv(run_dir / "manifest.csv")
    assert len(df) == 1 and df.status[0] == "ok"
    assert df.target_request[0] == f"{{similar_to: {ref}}}"
    assert df.model[0] == "efficientnet_lite0@similar_to"
    assert (run_dir / df.file_cam_heatmap[0]).is_file()
    assert np.load(run_dir / df.file_npy[0]).shape[-2:] == (2, 2)
