"""Hydra composition of every config group (compose API), the structured-config schema, and the
plan helpers that turn config values into objects: methods, targets, devices, group choices."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnnviz.app import plan
from cnnviz.app.choices import unknown_choices
from cnnviz.app.schema import register_configs
from cnnviz.core.errors import ConfigError
from cnnviz.app.plan import build_methods, parse_targets, resolve_device
from cnnviz.methods import get_method

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "image", "method", "experiment")
OPTIONS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in GROUPS}
COMPOSE_ERRORS = (HydraException, OmegaConfBaseException, ValueError)


def compose_cfg(overrides=(), return_hydra_config: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def option_yaml(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))


def test_every_group_has_options():
    for g in GROUPS:
        assert OPTIONS[g], g


# --- every option composes -------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIONS["model"])
def test_model_option_composes(name):
    cfg = compose_cfg([f"model={name}"])
    for key, value in option_yaml("model", name).items():
        if key == "preprocess":
            for k, v in value.items():
                assert cfg.model.preprocess[k] == v, (name, k)
        else:
            assert cfg.model[key] == value, (name, key)
    from cnnviz.app.plan import resolve_preprocess

    resolve_preprocess(cfg.model)  # model=timm leaves it to the timm model's pretrained configuration
    assert cfg.model.preprocess.input_size > 0


@pytest.mark.parametrize("name", OPTIONS["image"])
def test_image_option_lands_under_its_own_name(name):
    cfg = compose_cfg([f"image={name}"])
    assert list(cfg.image) == [name]
    for key, value in option_yaml("image", name).items():
        assert cfg.image[name][key] == value, (name, key)


@pytest.mark.parametrize("name", OPTIONS["method"])
def test_method_option_lands_under_its_own_name(name):
    cfg = compose_cfg([f"method={name}"])
    assert list(cfg.method) == [name]
    assert OmegaConf.to_container(cfg.method[name]) == (option_yaml("method", name) or {})


@pytest.mark.parametrize("name", OPTIONS["method"])
def test_every_method_config_builds_its_registered_method(name):
    methods, layers = build_methods(compose_cfg([f"method={name}"]).method)
    assert list(methods) == [name] and layers == {}
    assert isinstance(methods[name], get_method(name))


@pytest.mark.parametrize("name", OPTIONS["experiment"])
def test_experiment_option_composes(name):
    cfg = compose_cfg([f"experiment={name}"])
    assert cfg.method and cfg.image and cfg.model


def test_method_gradcam_has_exactly_its_key():
    cfg = compose_cfg(["method=gradcam"])
    assert list(cfg.method.keys()) == ["gradcam"]


def test_multi_select_methods_and_images():
    cfg = compose_cfg(["method=[gradcam,guided_backprop]", "image=[snake,spider]"])
    assert list(cfg.method) == ["gradcam", "guided_backprop"]
    assert list(cfg.image) == ["snake", "spider"]
    assert cfg.image.snake.target == option_yaml("image", "snake")["target"]
    assert cfg.image.spider.url == option_yaml("image", "spider")["url"]


def test_experiment_classic_has_four_methods_and_three_images():
    cfg = compose_cfg(["experiment=classic"])
    assert sorted(cfg.method) == sorted(["vanilla_backprop", "guided_backprop", "gradcam", "guided_gradcam"])
    assert sorted(cfg.image) == sorted(["snake", "cat_dog", "spider"])
    assert cfg.model.arch == "tf_efficientnet_lite0"  # the default model is kept


# --- the schema catches mistakes at composition ----------------------------------------------


def test_typo_key_fails_at_composition():
    with pytest.raises(COMPOSE_ERRORS):
        compose_cfg(["image.coffee.typo=1"])


def test_wrong_type_fails_at_composition():
    compose_cfg(["image=spider", "image.spider.limit=12"])  # an int is fine
    with pytest.raises(COMPOSE_ERRORS):
        compose_cfg(["image=spider", "image.spider.limit=abc"])
    # a target may be a class name, resolved against the model's class names when the plan is built
    compose_cfg(["image=spider", "image.spider.target=barn spider"])


@pytest.mark.parametrize("override", ["model.preprocess.input_size=big", "seed=abc", "render.alpha=opaque"])
def test_other_wrong_types_fail_at_composition(override):
    with pytest.raises(COMPOSE_ERRORS):
        compose_cfg([override])


def test_appended_typo_key_is_rejected_before_any_work(monkeypatch):
    class ReachedModelLoading(Exception):
        pass

    def load_model(*a, **k):
        raise ReachedModelLoading

    try:
        cfg = compose_cfg(["+image.coffee.typo=1"])
    except COMPOSE_ERRORS:
        return  # rejected at composition
    monkeypatch.setattr(plan, "load_model", load_model)
    with pytest.raises(ConfigError, match=r"image\.coffee\.typo"):
        plan.build_plan(cfg)


def test_model_weights_null_composes():
    cfg = compose_cfg(["model.weights=null"])
    assert cfg.model.weights is None
    assert cfg.model._target_ == "cnnviz.models.loaders.efficientnet_lite0"


def test_hydra_does_not_change_directory():
    cfg = compose_cfg(return_hydra_config=True)
    assert cfg.hydra.job.chdir is False
    # readable, stable job folders: a resumed sweep finds its jobs again
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] == "${hydra.job.override_dirname}"
    assert "resume" in cfg.hydra.job.config.override_dirname.exclude_keys


def test_defaults():
    cfg = compose_cfg()
    assert cfg.model._target_ == "cnnviz.models.loaders.efficientnet_lite0"
    assert cfg.model.arch == "tf_efficientnet_lite0"
    assert cfg.model.weights == "embedded"
    assert cfg.model.default_layer == "bn2"
    assert list(cfg.model.preprocess.mean) == [0.5, 0.5, 0.5]
    assert list(cfg.model.preprocess.std) == [0.5, 0.5, 0.5]
    assert list(cfg.image) == ["coffee"] and cfg.image.coffee.source == "skimage"
    assert list(cfg.method) == ["gradcam"]
    assert cfg.layer is None and cfg.target is None
    assert cfg.device == "cpu"
    assert cfg.experiment is None


# --- plan helpers ----------------------------------------------------------------------------


def test_unknown_hyperparameter_names_the_key():
    cfg = compose_cfg(["+method.gradcam.bogus=1"])
    with pytest.raises(ConfigError) as e:
        build_methods(cfg.method)
    assert "method.gradcam.bogus" in str(e.value)
    assert "relu" in str(e.value)  # lists the valid ones


def test_known_hyperparameter_is_passed_on():
    methods, _ = build_methods(compose_cfg(["method.gradcam.relu=false"]).method)
    assert methods["gradcam"].relu is False


def test_a_method_config_may_carry_its_own_layers():
    methods, layers = build_methods(compose_cfg(["+method.gradcam.layer=[blocks.5,bn2]"]).method)
    assert layers == {"gradcam": ["blocks.5", "bn2"]} and methods["gradcam"].params() == {"relu": True}


def test_no_method_is_a_config_error():
    with pytest.raises(ConfigError, match="method"):
        build_methods(OmegaConf.create({}))


@pytest.mark.parametrize("bad", [10, -1, 100])
def test_target_out_of_range_gives_the_valid_range(bad):
    with pytest.raises(ConfigError) as e:
        parse_targets(bad, 10)
    assert str(bad) in str(e.value) and "0..9" in str(e.value)


@pytest.mark.parametrize("bad", ["abc", 1.5, True])
def test_target_that_is_not_a_class_index(bad):
    with pytest.raises(ConfigError, match="target"):
        parse_targets(bad, 10)


def test_targets_accepted():
    assert parse_targets(None, 10) == [None]
    assert parse_targets("top1", 10) == ["top1"]
    assert parse_targets(0, 10) == [0] and parse_targets(9, 10) == [9]
    assert parse_targets([3, 1, 3], 10) == [3, 1]
    assert parse_targets(OmegaConf.create({"t": [2, "top1"]}).t, 10) == [2, "top1"]


def test_targets_from_composed_config():
    assert parse_targets(compose_cfg(["target=[243,56]"]).target, 1000) == [243, 56]
    assert parse_targets(compose_cfg(["target=top1"]).target, 1000) == ["top1"]
    with pytest.raises(ConfigError, match=r"0\.\.999"):
        parse_targets(compose_cfg(["target=[1,1000]"]).target, 1000)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available here")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_device_resolution_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError) as e:
            resolve_device(name)
        assert "device=cpu" in str(e.value)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu")


# --- choices ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arg,bad,near",
    [
        ("method=gradcm", "gradcm", "gradcam"),
        ("image=spidr", "spidr", "spider"),
        ("model=vgg91", "vgg91", "vgg19"),
        ("method=[gradcam,gradcm]", "gradcm", "gradcam"),
        ("experiment=clasic", "clasic", "classic"),
        ("method=gradcam,gradcm", "gradcm", "gradcam"),  # a --multirun sweep
    ],
)
def test_unknown_choice_suggests_close_matches(arg, bad, near):
    problems = unknown_choices([arg], CONF)
    assert len(problems) == 1
    p = problems[0]
    assert f"'{bad}'" in p
    assert near in p.split("close matches:")[1].split(";")[0]


@pytest.mark.parametrize(
    "args",
    [
        ["method=gradcam"],
        ["method=[gradcam,guided_backprop]"],
        ["image=[snake,spider]", "model=vgg19"],
        ["experiment=classic"],
        ["layer=foo"],
        ["target=5", "device=cuda", "image.spidr.target=3"],
        ["--multirun", "method=gradcam,vanilla_backprop"],
    ],
)
def test_valid_choices_and_other_keys_report_nothing(args):
    assert unknown_choices(args, CONF) == []


def test_every_option_is_a_valid_choice():
    for g in GROUPS:
        assert unknown_choices([f"{g}={o}" for o in OPTIONS[g]][:1] + [f"{g}=[{','.join(OPTIONS[g])}]"], CONF) == []


@pytest.mark.parametrize("override, expected", [
    ("method.occlusion.incremental=maybe", "method.occlusion.incremental='maybe': must be true or false"),
    ("method.occlusion.window=wide", "method.occlusion.window='wide': must be an integer"),
    ("method.occlusion.window=15.5", "method.occlusion.window=15.5: must be an integer"),
    ("method.occlusion.baseline=true", "method.occlusion.baseline=True: must be a number"),
])
def test_hyperparameter_of_the_wrong_type_names_the_key(override, expected):
    with pytest.raises(ConfigError) as e:
        build_methods(compose_cfg(["method=occlusion", override]).method)
    assert expected in str(e.value)


def test_well_typed_hyperparameters_pass_and_optional_takes_null():
    methods, _ = build_methods(compose_cfg(["method=integrated_gradients", "method.integrated_gradients.input_mean=null",
                                            "method.integrated_gradients.blur_sigma=3"]).method)
    assert methods["integrated_gradients"].blur_sigma == 3
