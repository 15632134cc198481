"""Agreement with captum, the benchmark's checks as tests: integrated gradients, SmoothGrad (given the
same noise draws) and occlusion on efficientnet_lite0 (embedded weights), at the benchmark's settings and
tolerance (``benchmarks/settings.py``) on a smaller input (``SIDE``). Skipped without the ``[bench]``
extra; slow (a real network, 50 passes per technique), so ``pytest -m "not slow"`` leaves them out."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("captum", reason="the [bench] extra (captum) is not installed")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a folder of the repository, not of the installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import as_array  # noqa: E402
from benchmarks.peers import captum_attr, captum_noise_tunnel_given_draws  # noqa: E402
from benchmarks.report import close  # noqa: E402
from benchmarks.settings import (IG_STEPS, MODELS, OCC_STRIDE, OCC_WINDOW, SG_NOISE, SG_SAMPLES,  # noqa: E402
                                 TARGET, load_model)
from benchmarks.suites import cnnviz_method  # noqa: E402
from cnnviz.engine import compute  # noqa: E402
from cnnviz.speed import fastpath  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "efficientnet_lite0"


#: The input's side. The benchmark runs 224 px; the elementwise comparisons do not depend on the size,
#: and at 128 px they cost a third (occlusion: 225 windows instead of 729, each a third of the pixels).
SIDE = 128


@pytest.fixture(scope="module")
def net_and_input():
    model = load_model(MODEL).eval()
    x = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    return model, x


def ours(name: str, model, x, **params) -> np.ndarray:
    """cnnviz's map for ``name`` on the model as given (no fast copy: captum's arithmetic)."""
    _, mean, std = MODELS[MODEL]
    with fastpath.exact():
        return as_array(compute(cnnviz_method(name, mean, std, **params), model, x, TARGET, []))


def test_integrated_gradients_equal_captum(net_and_input):
    model, x = net_and_input
    mine = ours("integrated_gradients", model, x, n_steps=IG_STEPS, method="gausslegendre", baseline="zero",
                internal_batch_size=10)
    ref = as_array(captum_attr("IntegratedGradients", model, x, n_steps=IG_STEPS, method="gausslegendre",
                               internal_batch_size=10)())
    verdict, rel = close(mine, ref)
    assert verdict == "EQUAL", f"max|diff| / max|captum| = {rel:.2e}"


def test_smoothgrad_equal_captum_given_the_same_noise_draws(net_and_input):
    model, x = net_and_input
    mine = ours("smoothgrad", model, x, n_samples=SG_SAMPLES, noise_level=SG_NOISE, batch_size=10)
    ref = as_array(captum_noise_tunnel_given_draws(model, x)())
    verdict, rel = close(mine, ref)
    assert verdict == "EQUAL", f"max|diff| / max|captum| = {rel:.2e}"


def test_occlusion_equal_captum_where_the_windows_are_the_same(net_and_input):
    model, x = net_and_input
    mine = ours("occlusion", model, x, window=OCC_WINDOW, stride=OCC_STRIDE, baseline=0.0)
    ref = as_array(captum_attr("Occlusion", model, x, sliding_window_shapes=(3, OCC_WINDOW, OCC_WINDOW),
                               strides=(3, OCC_STRIDE, OCC_STRIDE), baselines=0, perturbations_per_eval=16)())
    # captum slides one extra, clipped window per axis: only pixels below n see the same windows in both
    n = ((SIDE - OCC_WINDOW) // OCC_STRIDE + 1) * OCC_STRIDE
    verdict, rel = close(mine[..., :n, :n], ref[..., :n, :n])
    assert verdict == "EQUAL", f"max|diff| / max|captum| = {rel:.2e}"


# ---- vision transformers (issue 24): pytorch-grad-cam with its reshape_transform ------------------

def test_gradcam_on_vit_blocks_agrees_with_pytorch_grad_cam_reshape_transform():
    """Random-init vit_tiny: cnnviz's Grad-CAM at every block (one compute, tokens viewed as a grid by
    cnnviz itself) against pytorch-grad-cam's GradCAM given the tutorial's reshape_transform, one call
    per block. Both upsample the same 14x14 map to 224 px (bilinear, pytorch-grad-cam after its min-max
    scaling), so Pearson r, which ignores scale, is near 1; the last block's map is zero in both (the
    class-token head sends no gradient to the patch tokens)."""
    pytest.importorskip("pytorch_grad_cam", reason="the [bench] extra (grad-cam) is not installed")
    from benchmarks.vit import CORR_MIN, peer_maps, pearson, vit_model

    model = vit_model("vit_tiny_patch16_224")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    blocks = [f"blocks.{i}" for i in range(12)]
    mine = compute(cnnviz_method("gradcam", None, None), model, x, TARGET, blocks)
    theirs = peer_maps(model, blocks, x)
    assert [a.values.shape for a in mine] == [(1, 14, 14)] * 12
    for a, t in zip(mine[:-1], theirs[:-1]):
        assert a.upsampled.any()
        r = pearson(a.upsampled[0], t[0])
        assert r > CORR_MIN, (a.layer, r)
    assert not mine[-1].values.any() and not theirs[-1].any()
