"""Segmentation from saliency (issue 8): weakly supervised segmentation (Simonyan et al. 2013 §6),
class-evidence segmentation, segmentation networks explained through a class and a region, and
boxes reported in original-image pixels."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from cnnviz import ConfigError, explain, get_method
from cnnviz.methods import _segmentation_ops as seg
from cnnviz.api import Preprocess
from cnnviz.data.images import box_to_original, preprocess
from cnnviz.models.segmentation import (
    Region,
    RegionLogits,
    apply_region,
    parse_region,
    split_region_target,
    torchvision_segmentation,
)
from cnnviz.models.registry import model_loader
from conftest import hook_count, run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

PIXELS = Preprocess(mean=(0.0,) * 3, std=(1.0,) * 3)  # the tiny models read pixels in [0, 1]


# --- a synthetic scene: coloured discs on a textured background -------------------------------


def scene(h: int = 48, w: int = 64, discs=(((40, 22), 11, (0.85, 0.1, 0.1)),), seed: int = 0):
    """Textured greens and blues (redness and blueness below the models' thresholds) with discs
    ``((cx, cy), radius, rgb)``; returns the (1, 3, H, W) pixel tensor and each disc's mask."""
    rng = np.random.default_rng(seed)
    blocks = rng.random((h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
    img = np.stack([0.05 + 0.25 * blocks[..., 0], 0.35 + 0.45 * blocks[..., 1], 0.2 + 0.3 * blocks[..., 2]], axis=-1)
    img += rng.normal(0, 0.03, img.shape)
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for (cx, cy), r, rgb in discs:
        inside = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
        img[inside] = np.asarray(rgb) + rng.normal(0, 0.03, (inside.sum(), 3))
        masks.append(inside)
    x = torch.from_numpy(np.clip(img, 0, 1)).float().permute(2, 0, 1)[None]
    return x, masks


class ColourDetector(nn.Module):
    """Logit k = mean over pixels of a smoothed ReLU(colour k − threshold): red (k = 0) is
    R − (G + B)/2, blue (k = 1) is B − (R + G)/2. On ``scene`` only the discs pass the threshold,
    so the logits, and every gradient of them, depend on the disc pixels alone."""

    def __init__(self):
        super().__init__()
        detect = nn.Conv2d(3, 2, 1)
        smooth = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            detect.weight.copy_(torch.tensor([[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]]).view(2, 3, 1, 1))
            detect.bias.fill_(-0.4)
            smooth.weight.zero_()
            for k in range(2):
                smooth.weight[k, k] = 1.0 / 9
        self.features = nn.Sequential(detect, nn.ReLU(), smooth, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2) * 10)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def wss(**params):
    return get_method("weakly_supervised_segmentation")(**params)


# --- weakly supervised segmentation ---------------------------------------------------------


@pytest.mark.parametrize("source,params,layer", [
    ("vanilla_backprop", {}, None),
    ("gradcam", {}, "features.2"),
    ("smoothgrad", {"n_samples": 4, "batch_size": 4}, None),
])
def test_segmentation_of_the_disc_the_logit_depends_on(source, params, layer):
    x, (disc,) = scene()
    model = ColourDetector()
    attr = wss(source=source, source_params=params)(model, x, 0, layer=layer)
    mask = attr.extras["mask"] > 0
    assert seg.iou(mask, disc) >= 0.8, seg.iou(mask, disc)
    x0, y0, x1, y1 = attr.extras["bbox"]
    assert abs(x0 - 29) <= 2 and abs(y0 - 11) <= 2 and abs(x1 - 51) <= 2 and abs(y1 - 33) <= 2
    assert attr.metrics["mask_area_fraction"] == pytest.approx(mask.mean())
    assert attr.target == (0,) and attr.layer == layer and hook_count(model) == 0
    # the saliency that seeded GrabCut: only the disc's surroundings carry any (before the blur)
    raw = wss(source=source, source_params=params, blur=0)(model, x, 0, layer=layer).values[0, 0]
    assert raw[disc].mean() > 10 * max(raw[~disc].mean(), 1e-12)


def test_batch_items_are_segmented_independently():
    x, _ = scene()
    x2, _ = scene(discs=(((14, 30), 9, (0.85, 0.1, 0.1)),), seed=1)
    model, method = ColourDetector(), wss()
    both = method(model, torch.cat([x, x2]), 0)
    alone = method(model, x2, 0)
    np.testing.assert_array_equal(both.values[1], alone.values[0])
    np.testing.assert_array_equal(both.extras["mask"], method(model, x, 0).extras["mask"])  # extras: item 0


def test_grabcut_is_deterministic_given_the_seed():
    import cv2
    import skimage.data

    picture = np.asarray(Image.fromarray(skimage.data.rocket()).resize((64, 48)))
    noise = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    seeds = seg.quantile_seeds(cv2.GaussianBlur(noise, (0, 0), 4))
    masks = [seg.grabcut(picture, seeds, 5, s)[0] for s in range(6)]
    assert len({m.tobytes() for m in masks}) > 1  # GrabCut's k-means start depends on the RNG ...
    cv2.setRNGSeed(12345)
    cv2.randu(np.zeros((8, 8)), 0, 1)  # ... whose state anything else may have moved
    for s in range(6):
        np.testing.assert_array_equal(seg.grabcut(picture, seeds, 5, s)[0], masks[s])


def test_quantile_seeds_follow_the_paper():
    s = np.arange(100, dtype=float).reshape(10, 10)
    seeds = seg.quantile_seeds(s, q_fg=0.95, q_bg=0.30)
    flat = seeds.ravel()
    assert set(np.flatnonzero(flat == seg.FGD)) == set(range(95, 100))  # top 5 %
    assert set(np.flatnonzero(flat == seg.BGD)) == set(range(0, 30))    # bottom 30 %
    assert (flat[30:95] != seg.FGD).all() and (flat[30:95] != seg.BGD).all()
    assert (flat[63:95] == seg.PR_FGD).all() and (flat[30:62] == seg.PR_BGD).all()  # split at the 62.5 % quantile
    # a CAM after its ReLU: many zeros are background, never foreground
    zeros = np.zeros((10, 10))
    zeros[0, :3] = 1.0
    assert (seg.quantile_seeds(zeros)[1:] == seg.BGD).all()


def test_too_few_seed_pixels_fall_back_to_the_seeds_with_a_warning():
    seeds = np.full((6, 6), seg.BGD, np.uint8)
    seeds[2:4, 2:3] = seg.FGD
    mask, warnings = seg.grabcut(np.zeros((6, 6, 3), np.uint8), seeds, 5, 0)
    assert mask.sum() == 2 and "GrabCut skipped" in warnings[0]


def test_largest_component_and_box():
    m = np.zeros((10, 12), bool)
    m[1:3, 1:3] = True   # 4 pixels
    m[5:9, 6:11] = True  # 20 pixels
    m[8, 11] = True      # touches diagonally: 8-connected
    big = seg.largest_component(m)
    assert big.sum() == 21 and not big[1, 1]
    assert seg.bounding_box(big) == (6, 5, 12, 9)
    assert seg.bounding_box(np.zeros((3, 3), bool)) is None
    assert not seg.largest_component(np.zeros((3, 3), bool)).any()


@pytest.mark.parametrize("params,match", [
    ({"q_fg": 0.3, "q_bg": 0.5}, "q_bg < q_fg"),
    ({"source": "gradcm"}, r"method.weakly_supervised_segmentation.source.*close matches: gradcam"),
    ({"source": "class_segmentation"}, "itself a segmentation"),
    ({"source_params": {"n_sample": 3}, "source": "smoothgrad"}, r"source_params: \['n_sample'\]"),
])
def test_bad_hyperparameters_are_config_errors(params, match):
    x, _ = scene()
    with pytest.raises(ConfigError, match=match):
        wss(**params)(ColourDetector(), x, 0)


# --- boxes in original-image pixels ----------------------------------------------------------


def pre(**kw):
    return Preprocess(**{"input_size": 64, **kw})


@pytest.mark.parametrize("resize,size,box,expected", [
    # stretch 200x100 -> 64x64: x * 200/64, y * 100/64
    ("stretch", (200, 100), (16, 32, 48, 64), (50, 50, 150, 100)),
    # keep_aspect 200x100 -> 128x64: both axes * 100/64, no crop
    ("keep_aspect", (200, 100), (32, 16, 96, 48), (50, 25, 150, 75)),
    # center_crop 200x100, crop_pct 0.8 -> shorter side 80 (x 0.8) = 160x80, crop left 48, top 8
    ("center_crop", (200, 100), (0, 0, 64, 64), (60, 10, 140, 90)),
    ("center_crop", (100, 200), (2, 3, 10, 61), (12.5, 63.75, 22.5, 136.25)),
])
def test_box_to_original_for_each_resize_mode(resize, size, box, expected):
    got = box_to_original(box, size, pre(resize=resize, crop_pct=0.8))
    assert got == (math.floor(expected[0]), math.floor(expected[1]), math.ceil(expected[2]), math.ceil(expected[3]))


@pytest.mark.parametrize("resize", ["stretch", "keep_aspect", "center_crop"])
def test_a_rectangle_found_in_the_input_maps_back_onto_itself(resize):
    original = np.zeros((90, 150, 3), np.uint8)
    original[30:70, 50:110] = 255  # x 50..110, y 30..70 (pixel edges), well inside the crop
    p = pre(resize=resize, crop_pct=0.8, interpolation="nearest")
    _, picture = preprocess(Image.fromarray(original), p)
    found = seg.bounding_box(picture[..., 0] > 127)
    x0, y0, x1, y1 = box_to_original(found, (150, 90), p)
    scale = max(150, 90) / 64  # one input pixel, in original pixels
    assert max(abs(x0 - 50), abs(y0 - 30), abs(x1 - 110), abs(y1 - 70)) <= scale + 1


def test_explain_reports_the_box_in_original_pixels_for_a_non_square_image(tmp_path):
    x, (disc,) = scene(h=48, w=96, discs=(((70, 20), 11, (0.85, 0.1, 0.1)),))
    original = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    upscaled = original.resize((192, 96), Image.NEAREST)  # a 192x96 photo; the model sees it at 64 px high
    p = Preprocess(input_size=48, resize="keep_aspect", mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="nearest")
    ex = explain(ColourDetector(), upscaled, method="weakly_supervised_segmentation", target=0, preprocess_config=p)
    row = ex.save(tmp_path)[0]
    truth = seg.bounding_box(np.asarray(Image.fromarray(disc).resize((192, 96), Image.NEAREST)))  # original pixels
    got = (row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"])
    assert max(abs(a - b) for a, b in zip(got, truth)) <= 4, (got, truth)
    assert row["box_x1"] > 96  # original pixels (192 wide), not the 96 px input
    for kind in ("png_overlay", "png_mask", "png_box", "png_seeds"):
        assert (tmp_path / row[f"file_{kind}"]).is_file()


# --- class segmentation -----------------------------------------------------------------------


TWO_DISCS = (((20, 20), 10, (0.85, 0.1, 0.1)), ((46, 28), 10, (0.1, 0.1, 0.9)))


# (deconvnet's map of this model does not depend on the image: its rule lets every positive
# gradient through whatever the forward ReLU did, and the detector is a 1x1 convolution)
@pytest.mark.parametrize("source,layer", [("gradcam", "features.2"), ("cam", "features.3"), ("guided_gradcam", "features.2")])
def test_class_segmentation_labels_each_disc_with_its_class(source, layer):
    x, (red, blue) = scene(discs=TWO_DISCS)
    params = {"blur": 1.0} if source == "guided_gradcam" else {}
    attr = get_method("class_segmentation")(source=source, top_k=2, threshold=0.3, **params)(ColourDetector(), x, layer=layer)
    labels = attr.extras["label_map"]
    assert seg.iou(labels == 0, red) >= 0.8 and seg.iou(labels == 1, blue) >= 0.8
    assert (labels[~(red | blue)] == -1).mean() > 0.9  # the background stays unlabelled
    assert attr.metrics["fraction_0"] == pytest.approx((labels == 0).mean())
    assert attr.metrics["fraction_background"] == pytest.approx((labels == -1).mean())
    assert attr.target == () and attr.extras["legend"].classes in ((0, 1), (1, 0))


def test_class_segmentation_given_classes_and_the_legend_with_names(tmp_path):
    x, (red, blue) = scene(discs=TWO_DISCS)
    ex = explain(ColourDetector(), x, method="class_segmentation", layer="features.2", classes=[1],
                 preprocess_config=PIXELS, class_names=["red thing", "blue thing"])
    attr = ex.attributions[0]
    assert set(np.unique(attr.extras["label_map"])) == {-1, 1}
    assert seg.iou(attr.extras["label_map"] == 1, blue) >= 0.8
    row = ex.save(tmp_path)[0]
    assert row["fraction_1"] > 0 and "fraction_0" not in row
    legend = np.asarray(Image.open(tmp_path / row["file_png_legend"]))
    assert legend.shape[1] > legend.shape[0] and (tmp_path / row["file_png_overlay"]).is_file()


def test_class_segmentation_out_of_range_classes():
    x, _ = scene()
    with pytest.raises(ConfigError, match=r"classes: \[7\] out of range"):
        get_method("class_segmentation")(classes=[0, 7])(ColourDetector(), x, layer="features.2")


# --- segmentation networks: a class and a region ------------------------------------------------


class TinySeg(nn.Module):
    """torchvision's layout: ``backbone`` (two 3x3 convs: a receptive field of 5x5 pixels) and a
    1x1 ``classifier``, returning ``{"out": (B, 3, H, W)}``."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 3, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 0.1)

    def forward(self, x):
        return {"out": self.classifier(self.backbone(x)), "aux": None}


def test_region_logits_sum_the_class_over_the_region_and_keep_layer_names():
    net = TinySeg()
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    wrapped = RegionLogits(net, Region.from_box((4, 5, 12, 9)))
    with torch.no_grad():
        out = net(x)["out"]
        np.testing.assert_allclose(wrapped(x).numpy(), out[:, :, 5:9, 4:12].sum(dim=(2, 3)).numpy(), rtol=1e-5)
        everywhere = wrapped.with_region(Region())
        np.testing.assert_allclose(everywhere(x).numpy(), out.sum(dim=(2, 3)).numpy(), rtol=1e-5)
    assert everywhere.backbone is wrapped.backbone and wrapped.with_region(wrapped.region) is wrapped
    assert [n for n, _ in wrapped.named_modules()] == [""] + [n for n, _ in net.named_modules() if n]
    assert list(wrapped.state_dict()) == list(net.state_dict())


def test_pixels_outside_the_regions_receptive_field_get_zero_gradient():
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    wrapped = RegionLogits(TinySeg(), Region.from_box((8, 6, 14, 10)))
    g = np.abs(get_method("vanilla_backprop")()(wrapped, x, 1).values[0]).sum(axis=0)
    field = np.zeros((20, 24), bool)
    field[6 - 2:10 + 2, 8 - 2:14 + 2] = True  # the box grown by the two 3x3 convs' reach
    assert (g[~field] == 0).all()
    assert (g[6:10, 8:14] > 0).mean() > 0.9
    cam = get_method("gradcam")()(wrapped, x, 1, layer="backbone.2")  # torchvision-style layer name
    assert cam.values.shape == (1, 20, 24) and hook_count(wrapped) == 0


def test_mask_region_from_a_file(tmp_path):
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    m = np.zeros((20, 24), np.uint8)
    m[2:5, 3:7] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    region = parse_region({"mask": str(tmp_path / "m.png")})
    wrapped = RegionLogits(TinySeg(), region)
    with torch.no_grad():
        expected = wrapped.net(x)["out"][:, :, 2:5, 3:7].sum(dim=(2, 3))
        np.testing.assert_allclose(wrapped(x).numpy(), expected.numpy(), rtol=1e-5)


def test_region_targets_from_the_config(tmp_path):
    assert split_region_target(7) == (7, None)
    assert split_region_target({"class": 15, "region": "all"}) == (15, Region())
    target, region = split_region_target([{"class": 3, "region": {"box": [1, 2, 5, 6]}}, 4])
    assert target == [3, 4] and region == Region.from_box((1, 2, 5, 6))
    loaded = torchvision_segmentation("lraspp_mobilenet_v3_large", weights=None)
    named = apply_region(loaded, region, pre(resize="center_crop"))
    assert named.module.region == region and named.name == "lraspp_mobilenet_v3_large@box[1,2,5,6]"
    assert loaded.module.region == Region() and loaded.name == "lraspp_mobilenet_v3_large"  # the cached model is kept
    assert loaded.class_names[15] == "person"


@pytest.mark.parametrize("target,match", [
    ({"class": 1, "region": {"box": [1, 2, 3]}}, r"target.region.box must be four integers"),
    ({"class": 1, "region": {"box": [5, 2, 3, 9]}}, r"empty or negative"),
    ({"class": 1, "region": {"boxes": [1, 2, 3, 4]}}, r"unknown region kind 'boxes'.*close matches: box"),
    ({"class": 1, "region": "everything"}, r"is not a region; use region: all"),
    ({"class": 1, "region": {"mask": "/no/such/mask.png"}}, r"target.region.mask: file '/no/such/mask.png' does not exist"),
    ({"klass": 1}, r"target.klass: unknown key; close matches: class"),
    ({"region": "all"}, r"needs a class"),
    ([{"class": 1, "region": {"box": [0, 0, 2, 2]}}, {"class": 2, "region": "all"}], "the same region"),
])
def test_bad_region_targets_are_config_errors(target, match):
    with pytest.raises(ConfigError, match=match):
        split_region_target(target)


def test_regions_that_do_not_fit_the_model_or_input(tmp_path):
    loaded = torchvision_segmentation("lraspp_mobilenet_v3_large", weights=None)
    with pytest.raises(ConfigError, match=r"box \[0, 0, 65, 10\] does not fit the 64x64 model input"):
        apply_region(loaded, Region.from_box((0, 0, 65, 10)), pre())
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ConfigError, match=r"mask: '.*small.png' is 12x10 but the model input is 64x64"):
        apply_region(loaded, parse_region({"mask": str(tmp_path / "small.png")}), pre())
    classifier = type(loaded)(nn.Linear(2, 2), "tiny", "none", None)
    with pytest.raises(ConfigError, match="target.region needs a segmentation model"):
        apply_region(classifier, Region(), pre())
    with pytest.raises(ConfigError, match=r"model.name.*close matches: fcn_resnet50"):
        torchvision_segmentation("fcn_resnet5", weights=None)


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow  # end to end: run.py / script processes
def test_run_cli_weakly_supervised_segmentation_on_coffee(tmp_path, image_cache):
    run = tmp_path / "run"
    proc = run_cli(["method=weakly_supervised_segmentation", "image=coffee", "model.preprocess.resize=keep_aspect",
                    "model.preprocess.input_size=112"], run, image_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = pd.read_csv(run / "manifest.csv").iloc[0]
    assert row["status"] == "ok"
    for kind in ("png_overlay", "png_mask", "png_box", "png_seeds", "gray", "npy"):
        assert (run / row[f"file_{kind}"]).is_file()
    mask = np.asarray(Image.open(run / row["file_png_mask"])) > 0
    assert mask.shape == (112, 168)  # coffee is 600x400: keep_aspect gives a 168x112 input
    pre112 = Preprocess(input_size=112, resize="keep_aspect")
    box = (row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"])
    assert box == box_to_original(seg.bounding_box(mask), (600, 400), pre112)
    assert 0 <= box[0] < box[2] <= 600 and 0 <= box[1] < box[3] <= 400
    assert row["mask_area_fraction"] == pytest.approx(mask.mean())


class TinySegBN(TinySeg):
    """TinySeg with a BatchNorm after its first convolution (which the fast path folds)."""

    def __init__(self):
        super().__init__()
        norm = nn.BatchNorm2d(6)
        with torch.no_grad():
            norm.running_mean.uniform_(-0.2, 0.2, generator=torch.Generator().manual_seed(5))
            norm.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(6))
        self.backbone = nn.Sequential(self.backbone[0], norm, *self.backbone[1:])


@model_loader
def tiny_segmentation_model(seed: int = 0):
    """A loader for ``model._target_`` (registered: cnnviz builds no other callable by name): TinySegBN
    wrapped as ``model=torchvision_segmentation`` does."""
    from cnnviz.models.loaders import LoadedModel

    return LoadedModel(RegionLogits(TinySegBN()), "tiny_seg", "random", None, ["bg", "a", "b"])


def test_successive_plans_with_other_regions_on_the_cached_model():
    """Each plan gets a wrapper for its own region while the loaded network is reused, so nothing
    cached by model identity (the fast path's BatchNorm-folded copy) carries a region into the next."""
    from hydra import compose, initialize_config_dir

    from cnnviz.speed import fastpath
    from cnnviz.app.schema import register_configs
    from cnnviz.engine import compute
    from cnnviz.core.hooks import model_state_kept
    from cnnviz.app.plan import build_plan
    from conftest import ROOT

    register_configs()
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    grads = {}
    for spec in ("all", "{box:[4,4,12,10]}", "all", "{box:[4,4,12,10]}"):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                "model=torchvision_segmentation", "model._target_=test_segmentation.tiny_segmentation_model",
                "model.preprocess.input_size=24", "method=vanilla_backprop", f"target={{class:1,region:{spec}}}"])
        plan = build_plan(cfg)
        attr = compute(plan.methods["vanilla_backprop"], plan.model.module, x, 1, [], plan.speed)[0]
        assert fastpath._CACHE[plan.model.module].module is not None  # the folded copy ran
        with model_state_kept(plan.model.module), torch.no_grad():  # eval mode, as every technique runs
            out = plan.model.module.net(x)["out"][0, 1]
        expected = out.sum() if spec == "all" else out[4:10, 4:12].sum()
        assert attr.logits[0, 1] == pytest.approx(float(expected), rel=1e-4)
        grads.setdefault(spec, []).append(attr.values)
    for spec, (first, again) in grads.items():
        np.testing.assert_allclose(first, again, rtol=1e-5, atol=1e-7)
    g = np.abs(grads["{box:[4,4,12,10]}"][0][0]).sum(axis=0)
    assert (g[12:, :] == 0).all() and (g[:, 14:] == 0).all()  # the box's receptive field only
