"""Issue 21, point 12: configuration errors are configuration errors.

Every value that can be checked before work is checked before work (exit status 2, a message
naming the key): the render options, the ranges and choices of every technique's and metric's
hyperparameters (declared once, on the dataclass field, and checked generically), and unknown
hyperparameter keys, which get their close match even where Hydra's struct error would come first.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnnviz.app import plan
from cnnviz.app.choices import unknown_choices, unknown_keys
from cnnviz.app.schema import RenderConfig, register_configs
from cnnviz.core.errors import ConfigError
from cnnviz.metrics import get_metric, list_metrics
from cnnviz.app.plan import build_methods, build_metrics
from cnnviz.methods import get_method, list_methods

from conftest import run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

CONF = Path(__file__).resolve().parent.parent / "conf"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def compose_cfg(overrides=()):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def build(group: str, name: str, params: dict):
    """``method.<name>`` / ``metrics.<name>`` with ``params``, built as the runner builds them."""
    node = OmegaConf.create({name: params})
    return build_methods(node) if group == "method" else build_metrics(node, MEAN, STD)


def registered(group: str, name: str) -> type:
    return get_method(name) if group == "method" else get_metric(name)


EVERY = [("method", n) for n in list_methods()] + [("metrics", n) for n in list_metrics()]


# --- the examples of the issue, and their class ------------------------------------------------


@pytest.mark.parametrize("group, name, field, value", [
    ("method", "smoothgrad", "n_samples", 0),
    ("method", "smoothgrad", "batch_size", 0),
    ("method", "smoothgrad", "noise_level", -0.1),
    ("method", "smoothgrad", "variant", "foo"),
    ("method", "smoothgrad", "inner", "vanila_backprop"),
    ("method", "integrated_gradients", "n_steps", 0),
    ("method", "integrated_gradients", "baseline", "foo"),
    ("method", "integrated_gradients", "internal_batch_size", 0),
    ("method", "scorecam", "batch_size", 0),
    ("method", "ablationcam", "batch_size", 0),
    ("method", "ablationcam", "mode", "foo"),
    ("method", "occlusion", "window", 0),
    ("method", "occlusion", "stride", 0),
    ("method", "lrp", "rule", "foo"),
    ("method", "lrp", "gamma_fraction", 1.5),
    ("method", "lrp", "input_std", [0.5, 0.0, 0.5]),
    ("method", "class_model", "steps", 0),
    ("method", "class_model", "lr", 0.0),
    ("method", "class_model", "optimizer", "foo"),
    ("method", "deep_dream", "octave_scale", 1.0),
    ("method", "weakly_supervised_segmentation", "q_fg", 1.5),
    ("method", "class_segmentation", "threshold", -0.5),
    ("method", "class_segmentation", "classes", [3, -1]),
    ("method", "grad_times_image", "base", "foo"),
    ("method", "layercam", "gamma", 0.0),
    ("metrics", "deletion", "steps", 0),
    ("metrics", "insertion", "batch_size", 0),
    ("metrics", "deletion", "blur_sigma", -1.0),
    ("metrics", "pointing_game", "tolerance", -1.0),
    ("metrics", "pointing_game", "reduce", "foo"),
    ("metrics", "sanity_model_randomization", "steps", 0),
])
def test_bad_hyperparameters_are_refused_before_work_naming_the_key(group, name, field, value):
    with pytest.raises(ConfigError) as e:
        build(group, name, {field: value})
    assert f"{group}.{name}.{field}" in str(e.value)


def test_a_range_message_says_the_bound_and_the_default():
    with pytest.raises(ConfigError) as e:
        build("method", "smoothgrad", {"n_samples": 0})
    assert str(e.value) == "method.smoothgrad.n_samples=0 is out of range: it must be >= 1 (default 50)"
    with pytest.raises(ConfigError) as e:
        build("method", "weakly_supervised_segmentation", {"q_bg": -0.1})
    assert "must be in [0, 1] (default 0.3)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        build("method", "smoothgrad", {"variant": "sqr"})
    assert "method.smoothgrad.variant" in str(e.value) and "close matches: sq" in str(e.value)


def test_the_library_api_refuses_the_same_values_with_the_same_key():
    with pytest.raises(ConfigError, match=r"method\.smoothgrad\.n_samples=0 is out of range"):
        get_method("smoothgrad")(n_samples=0)
    with pytest.raises(ConfigError, match=r"metrics\.deletion\.steps=0 is out of range"):
        get_metric("deletion")(steps=0)
    with pytest.raises(ConfigError, match=r"method\.class_model\.momentum"):  # fields that only fail together
        get_method("class_model")(optimizer="adam", momentum=0.9)


# --- generated from the registries ----------------------------------------------------------


def bad_values(spec) -> list:
    """Values just outside what a declared constraint accepts, of the field's own type."""
    c = spec.constraint
    if c.choices is not None:
        return ["not_a_valid_choice"]
    integral = spec.integral
    out = []
    for bound, step in ((c.min, -1), (c.gt, 0), (c.max, +1), (c.lt, 0)):
        if bound is not None:
            v = bound + step if integral else float(bound) + (0.5 * step if step else 0.0)
            out.append(int(v) if integral else float(v))
    return [[v, v, v] if spec.each else v for v in out]


def constrained(group: str, name: str):
    try:
        from cnnviz.core.constraints import constraints
    except ImportError:  # collect the other tests anyway; the guard test below reports the missing module
        return []
    return sorted(constraints(registered(group, name)).items())


CASES = [(g, n, f, v) for g, n in EVERY for f, spec in constrained(g, n) for v in bad_values(spec)]


@pytest.mark.parametrize("group, name, field, value", CASES, ids=[f"{g}.{n}.{f}={v}" for g, n, f, v in CASES])
def test_every_constrained_field_of_every_technique_and_metric_refuses_a_bad_value(group, name, field, value):
    key = f"{group}.{name}.{field}"
    with pytest.raises(ConfigError) as e:
        build(group, name, {field: value})
    assert key in str(e.value)
    with pytest.raises(ConfigError) as e:  # the library API: the same check, the same key
        registered(group, name)(**{field: value})
    assert key in str(e.value)


#: numeric and text fields that accept any value of their type, and why (``*`` = of every technique)
FREE = {
    "sanity_data_randomization.weights": "a model.weights value, checked when the runner loads the reference model",
    "occlusion.baseline": "any value of the normalised input space",
    "cam.head": "a module name, resolved against the model (with close matches)",
    "*.only_under": "a module name, resolved against the model by the backward rule",
    "weakly_supervised_segmentation.source": "a technique, checked (with close matches) when the object is built",
    "class_segmentation.source": "a technique, checked (with close matches) when the object is built",
    "*.input_mean": "any mean colour",
    "*.objective": "an objective expression, parsed (names checked with close matches) when the object is built",
    "*.diversity_layer": "a module name, resolved against the model when the technique runs",
}


@pytest.mark.parametrize("group, name", EVERY)
def test_every_numeric_or_text_hyperparameter_declares_what_it_accepts(group, name):
    """A new field that can hold a bad number or an unknown word must say what it accepts."""
    from cnnviz.core.constraints import constraints

    cls = registered(group, name)
    hints = typing.get_type_hints(cls)
    declared = constraints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if type(None) in typing.get_args(hint):  # Optional[X]: X
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        base = typing.get_origin(hint) or hint
        if base is bool or {f"{name}.{f.name}", f"*.{f.name}"} & set(FREE) or base not in (int, float, str, list):
            continue
        assert f.name in declared, f"{group}.{name}.{f.name} declares no constraint (param(..., min=...))"


def test_every_default_in_the_yaml_files_and_the_classes_passes_the_checks():
    from cnnviz.core.constraints import check_values, constraints

    def defaults(cls):
        return {k: spec.default for k, spec in constraints(cls).items() if spec.default is not dataclasses.MISSING}

    for group in ("method", "metrics"):
        for path in sorted((CONF / group).glob("*.yaml")):
            values = OmegaConf.to_container(OmegaConf.load(path)) or {}
            build(group, path.stem, values)
            # the checks accept a field's own default unseen: look at every value here
            check_values(registered(group, path.stem), values, f"{group}.{path.stem}", trust_defaults=False)
    for group, name in EVERY:
        check_values(registered(group, name), defaults(registered(group, name)), f"{group}.{name}", trust_defaults=False)
        registered(group, name)()
    check_values(RenderConfig, OmegaConf.to_container(compose_cfg().render), "render", trust_defaults=False)
    check_values(RenderConfig, defaults(RenderConfig), "render", trust_defaults=False)


# --- render options ---------------------------------------------------------------------------


class ReachedModelLoading(Exception):
    pass


@pytest.fixture
def no_model(monkeypatch):
    def load_model(*a, **k):
        raise ReachedModelLoading

    monkeypatch.setattr(plan, "load_model", load_model)


@pytest.mark.parametrize("override, expected", [
    ("render.alpha=1.5", "render.alpha=1.5 is out of range: it must be in [0, 1] (default 0.4)"),
    ("render.alpha=-0.1", "render.alpha=-0.1 is out of range"),
    ("render.colormap=jte", "unknown colormap 'jte' (render.colormap); close matches: jet"),
    ("render.colormap=Viridis", "close matches: viridis"),
    ("method.smoothgrad.n_samples=0", "method.smoothgrad.n_samples=0 is out of range"),
])
def test_render_and_hyperparameters_are_checked_before_the_model_loads(override, expected, no_model):
    cfg = compose_cfg(["method=smoothgrad", override])
    with pytest.raises(ConfigError) as e:
        plan.build_plan(cfg)
    assert expected in str(e.value)


@pytest.mark.parametrize("override", ["render.colormap=viridis", "render.colormap=jet_r", "render.alpha=0",
                                      "render.alpha=1"])
def test_valid_render_options_pass(override, no_model):
    with pytest.raises(ReachedModelLoading):
        plan.build_plan(compose_cfg([override]))


# --- unknown keys, before Hydra -----------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["method=smoothgrad", "method.smoothgrad.samples=3"],
     "method.smoothgrad.samples: unknown hyperparameter of smoothgrad; close matches: n_samples; valid: "),
    (["method.gradcam.rleu=false"], "method.gradcam.rleu: unknown hyperparameter of gradcam; close matches: relu; "
                                    "valid: layer, relu"),
    (["method=smoothgrad", "method.smoothgrd.n_samples=3"], "unknown method 'smoothgrd' (method.smoothgrd.n_samples); "
                                                            "close matches: smoothgrad"),
    (["metrics=deletion", "metrics.deletion.stepz=3"], "metrics.deletion.stepz: unknown option of deletion; "
                                                       "close matches: steps"),
    (["metrics=completeness", "metrics.completeness.steps=3"], "metrics.completeness.steps: unknown option of "
                                                               "completeness; valid: none"),
    (["render.alpah=0.3"], "render.alpah: unknown key; close matches: alpha; valid: colormap, alpha"),
    (["render.color_map=jet"], "render.color_map: unknown key; close matches: colormap"),
    (["model.wieghts=null"], "model.wieghts: unknown key; close matches: weights"),
    (["model.preprocess.inputsize=3"], "model.preprocess.inputsize: unknown key; close matches: input_size"),
    (["-m", "method=smoothgrad", "method.smoothgrad.n_sample=1,2"], "close matches: n_samples"),
])
def test_unknown_keys_suggest_the_close_match_before_hydra_composes(args, expected):
    assert unknown_choices(args, CONF) == []
    problems = unknown_keys(args, CONF)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("args", [
    ["method=smoothgrad", "method.smoothgrad.n_samples=3", "method.smoothgrad.layer=blocks.5"],
    ["method.gradcam.layer=[blocks.5,bn2]", "+method.gradcam.layer=bn2"],
    ["method=smoothgrad", "+method.smoothgrad.samples=3"],  # appended: build_methods answers, see below
    ["~method.smoothgrad.bogus"],
    ["metrics=deletion", "metrics.deletion.steps=3", "render.alpha=0.2", "render.colormap=hsv"],
    ["model.weights=null", "model.preprocess.input_size=64", "model.preprocess.mean=[0.5,0.5,0.5]"],
    ["image.spidr.target=3", "hydra.run.dir=/tmp/x", "seed=3"],
])
def test_known_or_appended_keys_report_nothing(args):
    assert unknown_keys(args, CONF) == []


def test_every_key_of_every_yaml_is_known():
    for group in ("method", "metrics"):
        for path in sorted((CONF / group).glob("*.yaml")):
            keys = OmegaConf.to_container(OmegaConf.load(path)) or {}
            assert unknown_keys([f"{group}.{path.stem}.{k}=1" for k in keys], CONF) == [], path


def test_an_appended_unknown_key_gets_the_same_answer_from_build_methods():
    cfg = compose_cfg(["method=smoothgrad", "+method.smoothgrad.samples=3"])
    with pytest.raises(ConfigError) as e:
        build_methods(cfg.method)
    assert str(e.value).startswith(
        "method.smoothgrad.samples: unknown hyperparameter of smoothgrad; close matches: n_samples; valid: ")


# --- end to end: exit status 2, the key on stderr, no item ran ----------------------------------


def no_rows(run_dir: Path) -> bool:
    manifest = run_dir / "manifest.csv"
    return not manifest.exists() or len(manifest.read_text().strip().splitlines()) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["render.alpha=1.5"], ["render.alpha=1.5 is out of range"]),
    (["render.colormap=jte"], ["render.colormap", "close matches: jet"]),
    (["method=smoothgrad", "method.smoothgrad.n_samples=0"], ["method.smoothgrad.n_samples=0 is out of range"]),
    (["method=smoothgrad", "method.smoothgrad.samples=3"],
     ["method.smoothgrad.samples: unknown hyperparameter of smoothgrad; close matches: n_samples"]),
])
def test_run_py_exits_2_naming_the_key_and_runs_no_item(args, expected, tmp_path, image_cache):
    proc = run_cli(args, tmp_path, image_cache)
    assert proc.returncode == 2, proc.stderr[-2000:]
    for text in expected:
        assert text in proc.stderr
    assert "Traceback" not in proc.stderr
    assert no_rows(tmp_path) and not list(tmp_path.glob("*.png"))
