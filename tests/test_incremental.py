"""Incremental occlusion (cnnviz.methods._occlusion_incremental) gives the scores of full forwards, and steps aside
where it cannot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import get_method
from cnnviz.methods._occlusion_incremental import IncrementalOcclusion
from cnnviz.methods.occlusion import window_starts


class Net(nn.Module):
    """A VGG-like entry chain with every geometry the incremental path handles, then a head."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        bn = nn.BatchNorm2d(6)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), bn, nn.ReLU(inplace=True),
            nn.Conv2d(6, 6, 5, stride=2, padding=2, groups=2), nn.LeakyReLU(0.1),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(6, 8, 3, padding=2, dilation=2), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x):
        return self.head(self.features(x))


class InputAlsoUsedLater(Net):
    """The input is used again after the entry chain: a batch from the chain and a single input
    image would not mix as the shortcut assumes."""

    def forward(self, x):
        return self.head(self.features(x)) + x.mean(dim=(1, 2, 3))[:, None] * 10


def occlusion(model, x, incremental, **kw):
    kw = {"window": 7, "stride": 5, "perturbations_per_eval": 6, **kw}
    return get_method("occlusion")(incremental=incremental, **kw)(model, x, 3).values


@pytest.mark.parametrize("size, window, stride", [((40, 40), 7, 5), ((37, 45), 9, 4), ((33, 33), 15, 6)])
def test_incremental_equals_full_forwards(size, window, stride):
    model, x = Net().eval(), torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    want = occlusion(model, x, False, window=window, stride=stride)
    got = occlusion(model, x, True, window=window, stride=stride)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.abs(want).max() > 0


def test_incremental_path_is_taken_and_stops_where_rectangles_grow_large():
    model, x = Net().eval(), torch.randn(1, 3, 64, 64)
    boxes = [(i, j) for i in window_starts(64, 7, 5) for j in window_starts(64, 7, 5)]
    with torch.inference_mode():
        fast = IncrementalOcclusion.build(model, x, 7, boxes)
        assert fast is not None and 1 <= fast.cut <= len(model.features)
        for size, clean in zip(fast.sizes, fast.activations(0)[1:]):
            assert size[0] * size[1] <= 0.5 * clean.shape[2] * clean.shape[3]
        chunk = boxes[:4]
        batch = x.repeat(4, 1, 1, 1)
        for n, (i, j) in enumerate(chunk):
            batch[n, :, i:i + 7, j:j + 7] = 0.0
        torch.testing.assert_close(fast.logits(chunk, 0.0), model(batch), rtol=1e-4, atol=1e-5)
    assert isinstance(model.features, nn.Sequential)  # the stand-in is gone


def test_copies_of_several_images_in_one_call_equal_full_forwards():
    """Rows of different images, in any order, each from its own clean activations; an image's are
    dropped on release and computed again when asked for."""
    model, x = Net().eval(), torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    boxes = [(i, j) for i in window_starts(40, 7, 5) for j in window_starts(40, 7, 5)]
    corners, images = [(0, 0), (15, 30), (33, 5), (15, 30), (20, 20)], [2, 0, 1, 1, 2]
    with torch.inference_mode():
        fast = IncrementalOcclusion.build(model, x, 7, boxes)
        batch = x[images].clone()
        for n, (i, j) in enumerate(corners):
            batch[n, :, i:i + 7, j:j + 7] = 0.5
        want = model(batch)
        torch.testing.assert_close(fast.logits(corners, 0.5, images), want, rtol=1e-4, atol=1e-5)
        assert sorted(fast.states) == [0, 1, 2]
        fast.release(2)
        assert sorted(fast.states) == [0, 1]
        torch.testing.assert_close(fast.logits(corners, 0.5, images), want, rtol=1e-4, atol=1e-5)
        # rows of one image differ from those of another: a mix-up of sources would show
        assert not torch.allclose(want[1], want[3], rtol=1e-3)


def test_model_without_an_entry_sequential_runs_full_forwards():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    with torch.inference_mode():
        assert IncrementalOcclusion.build(model, torch.randn(1, 3, 16, 16), 5, [(0, 0)]) is None


def test_disagreement_is_noticed_and_full_forwards_are_used(caplog):
    model, x = InputAlsoUsedLater().eval(), torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    want = occlusion(model, x, False)
    with caplog.at_level("WARNING", logger="cnnviz"):
        got = occlusion(model, x, True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "disagrees" in caplog.text


def test_hooked_model_runs_full_forwards_so_its_hooks_see_every_image():
    model, x = Net().eval(), torch.randn(1, 3, 40, 40)
    seen = []
    handle = model.features[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        occlusion(model, x, True)
    finally:
        handle.remove()
    assert sum(seen) == 1 + 7 * 7  # the image itself, then each of the 49 occluded copies
