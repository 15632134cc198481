from pathlib import Path

import pytest

from cnnviz import ConfigError, get_method, list_methods, register
from cnnviz.core.registry import _REGISTRY

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_duplicate_name_raises():
    list_methods()  # builtins registered first
    with pytest.raises(ValueError, match="already registered"):
        register("gradcam")(type("Again", (), {}))


def test_unknown_name_lists_close_matches():
    with pytest.raises(ConfigError) as e:
        get_method("gradcm")
    assert "close matches: gradcam" in str(e.value)
    assert "vanilla_backprop" in str(e.value)


def test_method_configs_match_registry_both_ways():
    files = {p.stem for p in (CONF / "method").glob("*.yaml")}
    assert files == set(list_methods())


def test_method_config_package_is_its_name():
    for p in (CONF / "method").glob("*.yaml"):
        assert p.read_text().splitlines()[0] == f"# @package method.{p.stem}", p


def test_registered_class_knows_its_name():
    for name in list_methods():
        assert _REGISTRY[name].name == name
