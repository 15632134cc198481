"""The perturbation family on a batch of images (issue 23): each image's map equals a call on that
image alone (three images, three targets or a callable one, internal batch sizes that divide
nothing). Score-CAM and occlusion put the perturbed copies of several images into one model batch
(masks × images), ``batch_size`` / ``perturbations_per_eval`` still bounding the rows of every
forward; Ablation-CAM keeps one image per forward (its batching is tested in test_cam_family.py).

Models are float64, so "equal" is tight: only the order of sums inside batched convolutions differs.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import get_method
from conftest import hook_count, torch_threads

H, W = 23, 29  # odd sizes: neither the windows nor the masks tile them evenly
TARGETS = [0, 3, 1]


def difference(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 1] - logits[:, 2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids spin-waiting against other processes."""
    with torch_threads(1):
        yield


def seeded_(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


def cam_net(seed: int = 0) -> nn.Sequential:
    """conv -> ReLU -> conv (5 channels, stride 2) -> LeakyReLU -> conv -> ReLU -> GAP -> linear, float64."""
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 6, 3, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(6, 5, 3, padding=1, stride=2), act2=nn.LeakyReLU(0.1),
        conv3=nn.Conv2d(5, 4, 3, padding=1), relu3=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 5),
    ))
    return seeded_(model.double(), seed)


class EntryChain(nn.Module):
    """A local entry chain (the incremental occlusion path applies), then a head; float64."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(6, 6, 5, stride=2, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
        seeded_(self.double(), seed)
        self.rows: list[int] = []  # batch sizes of every call, recorded without a hook (a hook turns the incremental path off)

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.head(self.features(x))


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


#: (technique, hyperparameters, layer): internal batch sizes that divide neither the perturbations
#: of one image (5 channels; 4 x 5 = 20 occlusion windows) nor those of the batch
CASES = [
    ("scorecam", {"batch_size": 2}, "conv2"),
    ("scorecam", {"batch_size": 7, "relu": False}, "act2"),
    ("ablationcam", {"batch_size": 3, "mode": "expand", "relu": False}, "conv2"),
    ("ablationcam", {"batch_size": 4, "mode": "full"}, "act2"),
    ("ablationcam", {"batch_size": 7, "mode": "expand"}, "relu3"),
    ("occlusion", {"window": 7, "stride": 5, "perturbations_per_eval": 7, "incremental": False}, None),
    ("occlusion", {"window": 7, "stride": 5, "perturbations_per_eval": 7, "incremental": True}, None),
    ("occlusion", {"window": 9, "stride": 4, "perturbations_per_eval": 64, "incremental": True}, None),
]


def model_for(name: str) -> nn.Module:
    return EntryChain(3) if name == "occlusion" else cam_net(2)


@pytest.mark.parametrize("target", [TARGETS, difference], ids=["three-targets", "callable"])
@pytest.mark.parametrize("name, params, layer", CASES)
def test_batch_of_three_equals_three_single_calls(name, params, layer, target):
    model, x = model_for(name), images()
    method = get_method(name)(**params)
    both = method(model, x, target, layer=layer)
    assert both.target == (tuple(TARGETS) if isinstance(target, list) else ())
    for b in range(len(x)):
        one = method(model, x[b:b + 1], target[b] if isinstance(target, list) else target, layer=layer)
        scale = float(np.abs(one.values).max())
        assert scale > 0
        np.testing.assert_allclose(both.values[b], one.values[0], rtol=1e-9, atol=1e-12 * scale)
        np.testing.assert_allclose(both.logits[b], one.logits[0], rtol=1e-12)
    # three different targets give three different maps: a mix-up of rows would show
    if isinstance(target, list):
        first = method(model, x[:1], TARGETS[1], layer=layer).values[0]
        assert not np.allclose(first, both.values[0], rtol=1e-3)
    assert hook_count(model) == 0


class Rows:
    """Batch sizes of every forward of ``module`` (a pre-hook, removed on exit)."""

    def __init__(self, module: nn.Module):
        self.module, self.sizes = module, []

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(lambda _m, inp: self.sizes.append(inp[0].shape[0]))
        return self.sizes

    def __exit__(self, *exc):
        self.handle.remove()


def packed(total: int, per_batch: int) -> list[int]:
    """Batch sizes when ``total`` rows are cut into batches of ``per_batch``, the last one short."""
    return [per_batch] * (total // per_batch) + ([total % per_batch] if total % per_batch else [])


def test_scorecam_packs_the_masks_of_several_images_into_one_forward():
    model, x = cam_net(2), images()
    with Rows(model.conv1) as sizes:
        get_method("scorecam")(batch_size=4)(model, x, TARGETS, layer="conv2")
    assert sizes[0] == 3  # the activation pass
    assert sizes[1:] == packed(3 * 5, 4)  # 15 masked images in 4 forwards, not 3 x ceil(5 / 4) = 6


@pytest.mark.parametrize("incremental", [False, True])
def test_occlusion_packs_the_windows_of_several_images_into_one_forward(incremental):
    model, x = EntryChain(3), images()
    get_method("occlusion")(window=7, stride=5, perturbations_per_eval=7, incremental=incremental)(model, x, TARGETS)
    sizes = model.rows
    # the clean batch first, then 4 x 5 windows per image, 60 occluded copies in batches of 7
    assert sizes[0] == 3
    if not incremental:
        assert sizes[1:] == packed(60, 7)
        return
    # the probe that finds the entry chain (one image); then every batch, the first batch that
    # holds an image's windows twice: by full forwards and incrementally, as a check
    assert sizes[1] == 1
    starts = range(0, 60, 7)
    first_of_an_image = {start for start in starts if any(start <= b * 20 < start + 7 for b in range(3))}
    want = []
    for start, n in zip(starts, packed(60, 7)):
        want += [n, n] if start in first_of_an_image else [n]
    assert sorted(first_of_an_image) == [0, 14, 35]
    assert sizes[2:] == want


def test_incremental_occlusion_holds_the_clean_activations_of_few_images_at_once(monkeypatch):
    """Memory does not grow with the batch: an image's clean activations are dropped once its last
    window is done."""
    from cnnviz.methods._occlusion_incremental import IncrementalOcclusion

    held = []
    original = IncrementalOcclusion.logits

    def spy(self, *args, **kw):
        out = original(self, *args, **kw)
        held.append(sorted(self.states))
        return out

    monkeypatch.setattr(IncrementalOcclusion, "logits", spy)
    get_method("occlusion")(window=7, stride=5, perturbations_per_eval=7)(EntryChain(3), images(6), 1)
    # one call per batch of 7 rows (incremental, or the check beside full forwards); 7 rows never
    # span more than two images of 20 windows, and the images before them are gone
    assert len(held) == math.ceil(6 * 20 / 7)
    for start, alive in zip(range(0, 120, 7), held):
        assert alive == list(range(start // 20, min(start + 6, 119) // 20 + 1))
