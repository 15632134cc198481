"""Pure rendering functions: arrays in, uint8 images out (STYLE.md point 5).

Expectations are worked out by hand or taken from numpy / matplotlib directly, never from a run
of the code under test.
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib import colormaps

from cnnviz.output import render

H, W = 6, 7


@pytest.fixture
def grad() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, H, W)).astype(np.float32)


@pytest.fixture
def cam() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(H, W)).astype(np.float32)


@pytest.fixture(autouse=True)
def _no_numpy_warnings():
    """A division by zero or a NaN cast in a renderer is an error here, not a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with np.errstate(all="raise"):
            yield


def u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(a, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def test_output_dtypes_and_shapes(grad, cam):
    image = np.zeros((H, W, 3), np.uint8)
    expected = [
        (render.colored_gradient(grad), (H, W, 3)),
        (render.grayscale_gradient(grad), (H, W)),
        (render.positive_saliency(grad), (H, W, 3)),
        (render.negative_saliency(grad), (H, W, 3)),
        (render.cam_gray(cam), (H, W)),
        (render.cam_heatmap(cam), (H, W, 3)),
        (render.cam_on_image(cam, image), (H, W, 3)),
    ]
    for out, shape in expected:
        assert out.dtype == np.uint8 and out.shape == shape


def test_float64_input_gives_the_same_image(grad, cam):
    np.testing.assert_array_equal(render.colored_gradient(grad.astype(np.float64)), render.colored_gradient(grad))
    np.testing.assert_array_equal(render.cam_heatmap(cam.astype(np.float64)), render.cam_heatmap(cam))


def test_colored_gradient_is_minmax_over_all_channels(grad):
    out = render.colored_gradient(grad)
    c, i, j = np.unravel_index(grad.argmin(), grad.shape)
    assert out[i, j, c] == 0
    c, i, j = np.unravel_index(grad.argmax(), grad.shape)
    assert out[i, j, c] == 255
    g = grad.astype(np.float64)
    np.testing.assert_array_equal(out, u8((g - g.min()) / (g.max() - g.min())).transpose(1, 2, 0))


def test_colored_gradient_by_hand():
    g = np.zeros((3, 1, 2))
    g[0, 0] = [-2, 2]  # -> 0, 255
    g[1, 0] = [0, 1]  # 0 -> 127.5 -> 128 (round half to even), 1 -> 191.25 -> 191
    out = render.colored_gradient(g)
    np.testing.assert_array_equal(out[0, :, 0], [0, 255])
    np.testing.assert_array_equal(out[0, :, 1], [128, 191])
    np.testing.assert_array_equal(out[0, :, 2], [128, 128])


def test_grayscale_gradient_sums_abs_over_channels_by_hand():
    # |g| summed over channels: [1, 2, 3, 4]; 50th percentile = 2.5
    g = np.array([[[1, -1, 0, 4]], [[0, -1, 1, 0]], [[0, 0, -2, 0]]], dtype=np.float32)
    out = render.grayscale_gradient(g, percentile=50)
    np.testing.assert_array_equal(out, [[102, 204, 255, 255]])  # rint(255 * [0.4, 0.8, 1, 1.6 -> 1])


def test_grayscale_gradient_clips_at_the_99th_percentile():
    m = np.arange(1, 201, dtype=np.float64).reshape(10, 20)
    signs = np.random.default_rng(2).choice([-1.0, 1.0], size=(3, 10, 20))
    g = signs * m / 3  # |g| summed over channels is m, whatever the signs
    out = render.grayscale_gradient(g)
    top = np.percentile(m, 99)
    assert 198 < top < 199
    above = m > top
    assert above.sum() == 2 and (out[above] == 255).all()
    np.testing.assert_array_equal(out[~above], u8(m[~above] / top))
    assert out.min() == u8(1 / top)  # no min-subtraction: the smallest |g| is not black
    np.testing.assert_array_equal(render.grayscale_gradient(-g), out)


def test_grayscale_gradient_keeps_a_sparse_gradient_visible():
    # under 1% of pixels non-zero: the 99th percentile is 0, yet those pixels must not vanish
    g = np.zeros((3, 20, 20))
    g[0, 5, 5] = 1.0
    g[2, 7, 9] = -0.5
    out = render.grayscale_gradient(g)
    assert out[5, 5] == 255 and out[7, 9] == 128  # rint(255 * 0.5) = 128 (half to even)
    assert (out == 0).sum() == 400 - 2


def test_positive_and_negative_saliency(grad):
    pos, neg = render.positive_saliency(grad), render.negative_saliency(grad)
    hwc = grad.transpose(1, 2, 0).astype(np.float64)
    assert (pos[hwc <= 0] == 0).all() and (neg[hwc >= 0] == 0).all()
    assert pos.reshape(-1)[hwc.argmax()] == 255
    assert neg.reshape(-1)[hwc.argmin()] == 255
    np.testing.assert_array_equal(pos, u8(np.maximum(hwc, 0) / hwc.max()))
    np.testing.assert_array_equal(neg, u8(np.maximum(-hwc, 0) / -hwc.min()))


def test_saliency_of_one_sign_only_is_black_for_the_other():
    g = np.abs(np.random.default_rng(3).normal(size=(3, H, W))) + 0.1
    assert (render.negative_saliency(g) == 0).all()
    assert (render.positive_saliency(-g) == 0).all()
    assert render.positive_saliency(g).max() == 255


def test_cam_gray_is_minmax(cam):
    out = render.cam_gray(cam)
    assert out.reshape(-1)[cam.argmin()] == 0 and out.reshape(-1)[cam.argmax()] == 255
    c = cam.astype(np.float64)
    np.testing.assert_array_equal(out, u8((c - c.min()) / (c.max() - c.min())))


@pytest.mark.parametrize("cmap", ["jet", "hsv", "viridis"])
def test_cam_heatmap_uses_the_matplotlib_colormap(cmap):
    c = np.linspace(-1.0, 3.0, H * W).reshape(H, W)
    out = render.cam_heatmap(c, cmap)
    lut = colormaps[cmap]
    for i, j in [(0, 0), (2, 3), (H - 1, W - 1)]:
        rgba = lut((c[i, j] + 1.0) / 4.0)
        np.testing.assert_array_equal(out[i, j], u8(rgba[:3]))


def test_cam_heatmap_defaults_to_jet():
    c = np.linspace(0.0, 1.0, H * W).reshape(H, W)
    out = render.cam_heatmap(c)
    np.testing.assert_array_equal(out, render.cam_heatmap(c, "jet"))
    assert not np.array_equal(out, render.cam_heatmap(c, "viridis"))
    np.testing.assert_array_equal(out[0, 0], [0, 0, 128])  # jet(0) = dark blue (0, 0, 0.5)
    np.testing.assert_array_equal(out[-1, -1], [128, 0, 0])  # jet(1) = dark red (0.5, 0, 0)
    hsv = render.cam_heatmap(c, "hsv")
    np.testing.assert_array_equal(hsv[0, 0], [255, 0, 0])  # hsv(0) = red


def test_cam_heatmap_unknown_colormap_raises():
    with pytest.raises((KeyError, ValueError)):
        render.cam_heatmap(np.ones((2, 2)), "no_such_colormap")


def test_cam_on_image_blends_with_alpha(cam):
    image = np.random.default_rng(4).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    heat = render.cam_heatmap(cam)
    np.testing.assert_array_equal(render.cam_on_image(cam, image, alpha=0.0), image)
    np.testing.assert_array_equal(render.cam_on_image(cam, image, alpha=1.0), heat)
    half = render.cam_on_image(cam, image, alpha=0.25, cmap="jet")
    expected = np.rint(0.75 * image.astype(np.float64) + 0.25 * heat.astype(np.float64)).astype(np.uint8)
    np.testing.assert_array_equal(half, expected)
    hsv = render.cam_on_image(cam, image, alpha=1.0, cmap="hsv")
    np.testing.assert_array_equal(hsv, render.cam_heatmap(cam, "hsv"))


@pytest.mark.parametrize("shape", [(H + 1, W), (H, W - 1), (W, H)])
def test_cam_on_image_size_mismatch_raises(cam, shape):
    image = np.zeros((*shape, 3), np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        render.cam_on_image(cam, image)


@pytest.mark.parametrize("value", [0.0, 2.5, -1.0])
def test_constant_maps_render_without_nan(value):
    g = np.full((3, H, W), value)
    c = np.full((H, W), value)
    image = np.full((H, W, 3), 77, np.uint8)
    outs = [
        render.colored_gradient(g), render.grayscale_gradient(g), render.positive_saliency(g),
        render.negative_saliency(g), render.cam_gray(c), render.cam_heatmap(c), render.cam_on_image(c, image),
    ]
    for out in outs:
        assert out.dtype == np.uint8
    assert (render.colored_gradient(g) == 0).all() and (render.cam_gray(c) == 0).all()
    assert (render.grayscale_gradient(g) == (255 if value else 0)).all()
    assert (render.positive_saliency(g) == (255 if value > 0 else 0)).all()
    assert (render.negative_saliency(g) == (255 if value < 0 else 0)).all()
    assert (render.cam_heatmap(c) == u8(colormaps["jet"](0.0)[:3])).all()


def test_renderers_table_dispatches_to_the_functions(grad, cam):
    image = np.random.default_rng(5).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    o = SimpleNamespace(colormap="hsv", alpha=0.3)
    expected = {
        "color": render.colored_gradient(grad),
        "gray": render.grayscale_gradient(grad),
        "pos_sal": render.positive_saliency(grad),
        "neg_sal": render.negative_saliency(grad),
        "cam_gray": render.cam_gray(cam),
        "cam_heatmap": render.cam_heatmap(cam, "hsv"),
        "cam_on_image": render.cam_on_image(cam, image, 0.3, "hsv"),
        "lrp_heatmap": render.relevance_heatmap(grad),
    }
    assert set(render.RENDERERS) == set(expected)
    for kind, out in expected.items():
        np.testing.assert_array_equal(render.RENDERERS[kind](grad, cam, image, o), out)


def test_relevance_heatmap_is_centred_on_zero_and_symmetric():
    r = np.zeros((3, 4, 4))
    r[0, 0, 0], r[1, 3, 3] = 2.0, -2.0
    r[2, 1, 1] = 1.0
    out = render.relevance_heatmap(r)
    seismic = colormaps["seismic"]
    assert (out[2, 2] == u8(seismic(0.5)[:3])).all()      # zero relevance: the middle colour
    assert (out[0, 0] == u8(seismic(1.0)[:3])).all()      # largest positive: one end
    assert (out[3, 3] == u8(seismic(0.0)[:3])).all()      # equally large negative: the other end
    assert (out[1, 1] == u8(seismic(0.75)[:3])).all()     # half as large: halfway up


@pytest.mark.parametrize("cmap", ["jet", "viridis", "hsv", "seismic", "tab10", "gray"])
def test_colormap_table_lookup_equals_matplotlib(cmap):
    """Reference identity: the lookup gives matplotlib's own colours, at the bin edges and for NaN too."""
    v = np.concatenate([np.random.default_rng(6).random(5000), np.linspace(0, 1, 4097),
                        [0.0, 1.0, np.nextafter(1.0, 0), 1 / 256, 255 / 256, np.nan]])
    np.testing.assert_array_equal(render._through_colormap(v, cmap), u8(colormaps[cmap](v)[..., :3]))


@pytest.mark.parametrize("n", [1, 2, 7, 1001, 50176])
@pytest.mark.parametrize("q", [0, 1, 50, 99, 99.9, 100])
def test_percentile_is_numpys_linear_percentile(n, q):
    a = np.random.default_rng(n).standard_normal(n)
    assert render._percentile(a, q) == np.percentile(a, q)
    # float32 input: numpy interpolates in float32, the helper in float64
    a32 = a.astype(np.float32)
    assert render._percentile(a32, q) == pytest.approx(float(np.percentile(a32, q)), rel=1e-6, abs=1e-7)
