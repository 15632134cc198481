"""Object detectors (issue 24 §2): the detection score as a differentiable output, detection
targets, D-RISE, box drawing and per-box renders, and the runner's one item per detection."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from cnnviz.core.errors import ConfigError
from cnnviz.methods import get_method
from cnnviz.models import detection as det
from cnnviz.models.detection import (DetectionScores, box_iou, detect, references, similarity,
                                     split_detection_target, torchvision_detection)
from cnnviz.output import render

from conftest import ok, run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

SMALL = "fasterrcnn_mobilenet_v3_large_320_fpn"


# --- the score function -----------------------------------------------------------------------


def test_box_iou_of_hand_made_boxes():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0]])
    iou = box_iou(a, b)[0]
    # identical; half inside; 25 / (100 + 100 - 25); disjoint
    assert torch.allclose(iou, torch.tensor([1.0, 0.5, 25 / 175, 0.0]))


def test_similarity_is_the_max_of_iou_times_the_class_score():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    labels = torch.tensor([1, 1, 2, 3])
    scores = torch.tensor([0.3, 0.9, 0.99, 0.7], requires_grad=True)
    refs = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    got = similarity(boxes, labels, scores, refs, torch.tensor([1, 3, 4]))
    # class 1: max(1.0 * 0.3, 0.5 * 0.9) = 0.45 (the other classes' candidates do not count);
    # class 3: IoU 25/175 * 0.7; class 4: no candidate -> 0
    assert torch.allclose(got, torch.tensor([0.45, 25 / 175 * 0.7, 0.0]))
    got[0].backward()
    # only the winning candidate carries the gradient, with its IoU as the slope
    assert torch.allclose(scores.grad, torch.tensor([0.0, 0.5, 0.0, 0.0]))


def test_similarity_without_candidates_is_zero():
    z = similarity(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0),
                   torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([1]))
    assert z.shape == (1,) and float(z[0]) == 0.0


# --- the wrapper on a real torchvision detector -----------------------------------------------


@pytest.fixture(scope="module")
def small_detector():
    loaded = torchvision_detection(SMALL, weights=None)
    # the detector resizes every input to 320 px itself; 128 px keeps these tests fast
    loaded.module.net.transform.min_size, loaded.module.net.transform.max_size = (128,), 160
    return loaded


def _image(seed: int = 0, h: int = 128, w: int = 160) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g)


def test_loader_random_init_is_offline_seeded_and_named(small_detector):
    loaded = small_detector
    assert isinstance(loaded.module, DetectionScores) and loaded.weights == "random(seed=0)"
    assert loaded.class_names[1] == "person" and len(loaded.class_names) == 91  # COCO, from the enum's meta
    names = dict(loaded.module.named_modules())
    assert "backbone.body.16" in names and "roi_heads" in names  # torchvision's own layer names
    again = torchvision_detection(SMALL, weights=None)
    for (k, a), (_, b) in zip(loaded.module.state_dict().items(), again.module.state_dict().items()):
        assert torch.equal(a, b), k


def test_wrapper_score_equals_the_detectors_score_and_is_differentiable(small_detector):
    model = small_detector.module
    x = _image()
    dets = detect(model, x, score_threshold=0.005)
    assert len(dets.scores) > 0, "the seeded random detector should detect something at a low threshold"
    holder = model.net.roi_heads
    saved = (holder.score_thresh, holder.nms_thresh, holder.detections_per_img)
    wrapped = model.with_references(dets.boxes[:2], dets.labels[:2])
    was = [m.training for m in wrapped.modules()]
    assert not any(was)  # the loader's detector is in eval mode, and so is a new wrapper of it
    with torch.no_grad():
        out = wrapped(x)
    assert out.shape == (1, 2)
    # the top detection is the best-scoring candidate of its class: its similarity is its score
    assert abs(float(out[0, 0]) - float(dets.scores[0])) < 1e-5
    assert float(out[0, 1]) >= float(dets.scores[1]) - 1e-5
    xg = x.clone().requires_grad_(True)
    wrapped(xg)[0, 0].backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    assert (holder.score_thresh, holder.nms_thresh, holder.detections_per_img) == saved  # thresholds restored
    assert [m.training for m in wrapped.modules()] == was


@pytest.mark.slow  # several passes of a real detector
def test_gradcam_and_vanilla_backprop_on_a_detection(small_detector):
    model = small_detector.module
    x = _image(1)
    wrapped, items = references(model, x, det.DetectionRequest("detections", score_threshold=0.005, max_detections=1),
                                small_detector.class_names)
    assert len(items) == 1 and items[0].index == 0
    cam = get_method("gradcam")()(wrapped, x, target=0, layer="backbone.body.16")
    assert cam.upsampled.shape == (1, *x.shape[-2:]) and np.isfinite(cam.upsampled).all()
    grad = get_method("vanilla_backprop")()(wrapped, x, target=0)
    assert grad.values.shape == tuple(x.shape) and np.abs(grad.values).sum() > 0


def test_class_target_keeps_the_detections_of_that_class_best_first(small_detector):
    model, names = small_detector.module, small_detector.class_names
    x = _image()
    dets = detect(model, x, 0.005)
    cls = int(dets.labels[0])
    wrapped, items = references(model, x, det.DetectionRequest("class", cls, score_threshold=0.005, max_detections=4),
                                names)
    want = dets.scores[dets.labels == cls][:4]
    assert [i.label for i in items] == [cls] * len(want) and np.allclose([i.score for i in items], want)
    assert [i.index for i in items] == list(range(len(want))) and str(items[1]) == f"class{cls}#d1"
    assert wrapped.ref_boxes.shape == (len(want), 4)
    _, none = references(model, x, det.DetectionRequest("class", 0, score_threshold=0.005), names)  # background
    assert none == []


@pytest.mark.slow  # several passes of a real detector
def test_box_target_matches_a_detection_or_uses_the_box(small_detector):
    model, names = small_detector.module, small_detector.class_names
    x = _image()
    dets = detect(model, x, 0.005)
    box, cls = tuple(float(v) for v in dets.boxes[0]), int(dets.labels[0])
    request = det.DetectionRequest("box", cls, box, score_threshold=0.005)
    _, items = references(model, x, request, names, box)
    assert [i.source for i in items] == ["detected"] and items[0].label == cls
    assert np.allclose(items[0].box, dets.boxes[0]) and abs(items[0].score - float(dets.scores[0])) < 1e-6
    far = (0.0, 0.0, 3.0, 3.0)  # a box nothing of that class matches: the box itself is the reference
    wrapped, items = references(model, x, det.DetectionRequest("box", cls, far, score_threshold=0.005), names, far)
    assert [i.source for i in items] == ["given box"] and items[0].box == far
    with torch.no_grad():
        assert abs(float(wrapped(x)[0, 0]) - items[0].score) < 1e-6


def test_weights_offline_fail_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(ConfigError) as e:
        torchvision_detection(SMALL, weights="DEFAULT")
    message = str(e.value)
    assert "model.weights" in message and "model.weights=null" in message and str(tmp_path) in message
    with pytest.raises(ConfigError, match="COCO_V1"):
        torchvision_detection(SMALL, weights="IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="model.name"):
        torchvision_detection("fasterrcnn_resnet999", weights=None)


# --- targets from the config ------------------------------------------------------------------


def test_detection_targets_from_the_config():
    cfg = {"score_threshold": 0.2, "max_detections": 3, "per_box": True}
    assert split_detection_target(None, cfg, True) == (None, det.DetectionRequest("detections", None, None, 0.2, 3, True))
    _, r = split_detection_target({"class": 17}, cfg, True)
    assert (r.kind, r.cls, str(r)) == ("class", 17, "class17")
    _, r = split_detection_target({"box": [1, 2, 30, 40], "class": 17}, cfg, True)
    assert (r.kind, r.box, str(r)) == ("box", (1.0, 2.0, 30.0, 40.0), "box[1,2,30,40]/class17")
    assert split_detection_target(5, {}, False) == (5, None)  # classifiers: unchanged
    with pytest.raises(ConfigError, match="needs a detector"):
        split_detection_target("detections", {}, False)
    with pytest.raises(ConfigError, match="target.box"):
        split_detection_target({"box": [10, 2, 3, 40], "class": 1}, cfg, True)
    with pytest.raises(ConfigError, match="target.class"):
        split_detection_target({"box": [1, 2, 3, 4]}, cfg, True)
    with pytest.raises(ConfigError, match="model.score_threshold"):
        split_detection_target(None, {"score_threshold": 2}, True)
    with pytest.raises(ConfigError, match="close matches: class"):
        split_detection_target({"clas": 1}, cfg, True)


def test_a_null_score_threshold_is_half_for_trained_weights_and_zero_for_a_random_init(caplog):
    """A random init scores every class about 1/91: with a threshold nothing would be explained, so
    model.weights=null explains the best max_detections candidates and the log says so."""
    _, trained = split_detection_target(None, {"weights": "DEFAULT"}, True)
    assert trained.score_threshold == 0.5 and not caplog.records
    with caplog.at_level("WARNING", logger="cnnviz"):
        _, random_init = split_detection_target(None, {"weights": None, "max_detections": 4}, True)
    assert random_init.score_threshold == 0.0 and random_init.max_detections == 4
    assert "randomly initialised detector" in caplog.text and "model.score_threshold" in caplog.text
    _, chosen = split_detection_target(None, {"weights": None, "score_threshold": 0.3}, True)
    assert chosen.score_threshold == 0.3  # a value set in the config wins


# --- D-RISE -----------------------------------------------------------------------------------


class BoxMean(nn.Module):
    """A "detector" whose one score is the mean of the input inside a box: D-RISE's weight of a
    mask is then the mask's mean inside the box, so the map must be higher there."""

    output_is_score = True
    box = (4, 8, 14, 20)  # x0, y0, x1, y1

    def forward(self, x):
        x0, y0, x1, y1 = self.box
        return x[:, :, y0:y1, x0:x1].mean(dim=(1, 2, 3))[:, None]


def test_drise_is_high_inside_the_box_of_a_box_mean_score():
    x = torch.ones(2, 3, 32, 32)
    attr = get_method("drise")(n_masks=300, cell_size=8, batch=64)(BoxMean(), x, target=0)
    assert attr.values.shape == (2, 3, 32, 32) and attr.upsampled is None
    assert np.array_equal(attr.values[:, 0], attr.values[:, 2])  # the masks cover every channel alike
    inside = np.zeros((32, 32), bool)
    x0, y0, x1, y1 = BoxMean.box
    inside[y0:y1, x0:x1] = True
    v = attr.values[0, 0]
    assert v[inside].mean() > v[~inside].mean() + 0.01
    # far from the box the weight is independent of the mask: E[w M] = E[w] p there
    assert abs(v[24:, 24:].mean() - 0.5 * 0.5) < 0.05
    assert np.array_equal(attr.values[0], attr.values[1])  # the same masks for every image


def test_drise_is_seeded_and_independent_of_its_batch_size():
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    a = get_method("drise")(n_masks=40, cell_size=4, batch=7)(BoxMean(), x, target=0)
    b = get_method("drise")(n_masks=40, cell_size=4, batch=40)(BoxMean(), x, target=0)
    c = get_method("drise")(n_masks=40, cell_size=4, batch=40, seed=1)(BoxMean(), x, target=0)
    assert np.allclose(a.values, b.values, atol=1e-6) and not np.allclose(a.values, c.values)


def test_rise_on_a_classifier_weights_masks_by_the_class_probability():
    class TwoRegions(nn.Module):
        """Class 0's logit is 4 x the mean of the left half, class 1's of the right half."""

        def forward(self, x):
            w = x.shape[-1] // 2
            return torch.stack([4 * x[..., :w].mean(dim=(1, 2, 3)), 4 * x[..., w:].mean(dim=(1, 2, 3))], dim=1)

    x = torch.ones(1, 3, 16, 16)
    attr = get_method("drise")(n_masks=300, cell_size=4, batch=100)(TwoRegions(), x, target=0)
    v = attr.values[0, 0]
    assert v[:, :8].mean() > v[:, 8:].mean() + 0.01
    assert np.allclose(attr.logits, [[4.0, 4.0]])


# --- rendering --------------------------------------------------------------------------------


def test_draw_boxes_outlines_in_the_box_colour_and_keeps_the_input():
    img = np.full((40, 50, 3), 100, np.uint8)
    out = render.draw_boxes(img, [(10, 5, 30, 35)], ["cat"], width=2)
    assert out.dtype == np.uint8 and out.shape == img.shape and (img == 100).all()
    green = np.all(out == render.BOX_COLOR, axis=2)
    # bottom edge, and the left and right edges below the label (x1 / y1 exclusive: last pixel 29 / 34)
    assert green[33:35, 10:30].all() and green[20:35, 28:30].all() and green[20:35, 10:12].all()
    assert green[5:7, 10:30].all()  # top edge
    assert not green[20:33, 12:28].any()  # inside below the label stays as it was
    assert (out[35:, :] == 100).all() and (out[:, 30:] == 100).all()  # outside the box untouched
    labelled = render.draw_boxes(img, [(10, 5, 30, 35)], [""], width=2)
    assert (np.all(labelled == render.BOX_COLOR, axis=2)[7:20, 12:28] == False).all()  # noqa: E712  (no label: no strip)


def test_normalised_in_box_and_inside_box():
    cam = np.arange(100, dtype=np.float64).reshape(10, 10)
    out = render.normalised_in_box(cam, (2, 3, 5, 6))
    assert out[3, 2] == 0.0 and out[5, 4] == 1.0 and (out[:3] == 0).all() and (out[:, 5:] == 0).all()
    assert np.isclose(out[4, 3], (43 - 32) / (54 - 32))
    values = np.stack([cam, -cam, cam])
    kept = render.inside_box(values, (2.5, 3, 5, 6))  # a fractional edge: the pixel it cuts is in
    assert kept.shape == values.shape and np.array_equal(kept[:, 3:6, 2:5], values[:, 3:6, 2:5])
    assert kept.sum() == values[:, 3:6, 2:5].sum()


# --- end to end -------------------------------------------------------------------------------


def _green_pixels(path) -> int:
    return int(np.all(np.asarray(Image.open(path).convert("RGB")) == render.BOX_COLOR, axis=2).sum())


@pytest.mark.slow
def test_run_cli_eigencam_one_row_per_detection_with_boxes_drawn_and_resume(tmp_path, image_cache):
    run = tmp_path / "run"
    # the command: a random init with the default (null) score_threshold explains its best candidates
    args = ["model=torchvision_detection", f"model.name={SMALL}", "model.weights=null", "target=detections",
            "method=eigencam", "model.max_detections=3", "model.preprocess.input_size=160", "image=coffee"]
    proc = ok(run_cli(args, run, image_cache))
    frame = pd.read_csv(run / "manifest.csv")
    assert len(frame) == 3 and (frame["status"] == "ok").all()
    assert list(frame["detection"]) == [0, 1, 2] and frame["target_request"].is_unique
    assert list(frame["target_request"]) == ["detections#d0", "detections#d1", "detections#d2"]
    assert (frame["detection_score"] > 0).all() and (frame["detection_x1"] > frame["detection_x0"]).all()
    assert list(frame["detection_score"]) == sorted(frame["detection_score"], reverse=True)  # best first
    assert "randomly initialised detector" in proc.stdout + proc.stderr
    for k, row in frame.iterrows():
        assert row["file_cam_on_image"].endswith(f"_d{k}_cam_on_image.png")
        assert _green_pixels(run / row["file_cam_on_image"]) > 100  # the box outline
    assert _green_pixels(run / frame["file_input"][0]) == 0
    again = ok(run_cli(args + ["resume=true"], run, image_cache))
    assert "3 item(s) already complete" in again.stdout + again.stderr, proc.stdout[-500:]
    assert len(pd.read_csv(run / "manifest.csv")) == 3


@pytest.mark.slow
def test_run_cli_drise_on_a_box_target_with_per_box_renders(tmp_path, image_cache):
    run = tmp_path / "run"
    ok(run_cli(["model=torchvision_detection", "model.weights=null", "method=drise", "method.drise.n_masks=8",
                "method.drise.batch=8", "method.drise.cell_size=4", "target={box:[300,50,500,300],class:89}",
                "model.score_threshold=0.005", "model.per_box=true", "model.preprocess.input_size=160", "image=coffee"],
               run, image_cache))
    frame = pd.read_csv(run / "manifest.csv")
    assert len(frame) == 1 and frame["status"][0] == "ok" and frame["detection_label"][0] == 89
    assert frame["target_request"][0].startswith("box[300,50,500,300]/class89#d0")
    assert _green_pixels(run / frame["file_color"][0]) > 100
    raw = np.load(run / frame["file_npy"][0])
    assert raw.shape[0] == 3 and np.isfinite(raw).all()


def test_scorecam_and_deletion_read_a_score_model_without_softmax():
    """A model whose outputs are scores already (the detection wrapper sets ``output_is_score``):
    Score-CAM's weights and the deletion curve read them as they are, as for a callable target."""
    from cnnviz import get_method
    from cnnviz.metrics.perturbation import perturbation_curve
    from conftest import TinyCNN

    class Scores(TinyCNN):
        output_is_score = True

    torch.manual_seed(0)
    plain = TinyCNN().eval()
    scored = Scores().eval()
    scored.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(2))
    cam = get_method("scorecam")()
    raw = cam(plain, x, lambda out: out[:, 2], layer="features.3").values
    assert np.allclose(cam(scored, x, 2, layer="features.3").values, raw, atol=1e-5)
    assert not np.allclose(cam(plain, x, 2, layer="features.3").values, raw, atol=1e-5)
    saliency = np.random.default_rng(0).random((10, 12))
    with torch.no_grad():
        _, direct = perturbation_curve(scored, x, saliency, 2, "deletion", steps=4, scores=True)
        _, soft = perturbation_curve(scored, x, saliency, 2, "deletion", steps=4)
        assert np.isclose(direct[0], float(scored(x)[0, 2]), atol=1e-5)
        assert np.isclose(soft[0], float(scored(x).softmax(-1)[0, 2]), atol=1e-5)
