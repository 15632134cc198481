"""Object detectors as the model under study: the score of one detection as a differentiable output.

A torchvision detector returns, per image, boxes, labels and scores after a score threshold and
non-maximum suppression: no ``(B, classes)`` logits a technique could explain. Following
``segmentation.py``'s ``RegionLogits``, ``DetectionScores`` wraps one so that its forward returns
``(B, K)``: the similarity of the detector's output on each image to K *reference detections*
``(box_k, class_k)`` of one image, so every technique, target and manifest column of cnnviz applies
unchanged, and explaining target k explains detection k. The wrapper takes over the network's
children under their own names (``layer=backbone.body.layer4``).

The score is D-RISE's similarity (Petsiuk et al. 2021, "Black-box Explanation of Object Detectors
via Saliency Maps", CVPR 2021)::

    score_k(x) = max_j IoU(box_j(x), box_k) · p_j(x)[class_k]

over the detector's candidate detections j *before* its score threshold and NMS drop them (inside
the forward the thresholds are lowered to 0 and NMS switched off, and restored after), so a
perturbed input still has candidates:

- two-stage (Faster R-CNN): a candidate is an RPN proposal's class-specific box and its post-softmax
  class score from the ROI head;
- one-stage (RetinaNet, FCOS, SSDlite): a candidate is an anchor's (location's) decoded box and its
  per-class score after the sigmoid (FCOS: sqrt(sigmoid(class) · sigmoid(centerness)), as
  torchvision scores it) or softmax (SSD).

The paper's similarity is IoU · cos(P_k, P_j) · O_j with P the class-probability vectors and O_j an
objectness. We take the reference's class vector as one-hot, so the cosine becomes p_j[class_k]
without its 1/‖P_j‖ (torchvision's one-stage heads give independent per-class sigmoid scores and no
objectness, and their norm over 91 classes would make a detection's score depend on every other
class); the objectness is inside p_j for the two-stage detector (its background class). For the
detection itself on the unperturbed image the score is its detector score when it is the
best-scoring candidate of its class (always for the top detection).

Example::

    loaded = torchvision_detection("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None)   # offline
    dets = detect(loaded.module, x, score_threshold=0.5)            # x: (1, 3, H, W) in [0, 1]
    model = loaded.module.with_references(dets.boxes, dets.labels)
    attr = get_method("gradcam")()(model, x, target=0, layer="backbone.body.16")   # detection 0
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import ConfigError, unknown
from ..core.hooks import model_state_kept
from ..output.files import file_sha256
from .loaders import LoadedModel, _seeded, torchvision_weights
from .registry import model_loader

log = logging.getLogger("cnnviz")

#: the detectors ``model=torchvision_detection`` takes, and their default layer: a module whose
#: output is a (B, C, H, W) tensor (the FPN's ``backbone`` returns an OrderedDict, so the last stage
#: of its body; SSDlite's ``backbone.features.1`` is its last MobileNet stage before the extra layers)
DEFAULT_LAYERS = {
    "fasterrcnn_resnet50_fpn_v2": "backbone.body.layer4",
    "retinanet_resnet50_fpn_v2": "backbone.body.layer4",
    "fcos_resnet50_fpn": "backbone.body.layer4",
    "ssdlite320_mobilenet_v3_large": "backbone.features.1",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "backbone.body.16",
}

#: a reference box matches a detection of its class at this IoU or more (``target={box: ..., class: c}``)
MATCH_IOU = 0.5

#: "no limit" for the number of candidates a forward keeps
_ALL = 10 ** 6


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(K, 4)`` and ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` -> ``(K, N)`` IoU, differentiable in both."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def similarity(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, ref_boxes: torch.Tensor,
               ref_labels: torch.Tensor) -> torch.Tensor:
    """``(K,)``: for each reference k, max_j IoU(boxes_j, ref_boxes_k) · scores_j over the candidates j
    whose label is ref_labels_k (0 when there is none). Candidates: ``(N, 4)`` boxes, ``(N,)`` labels
    and scores (a torchvision detector's output, one entry per box and class)."""
    if boxes.shape[0] == 0 or ref_boxes.shape[0] == 0:
        return scores.new_zeros(ref_boxes.shape[0]) + 0 * scores.sum()
    iou = box_iou(ref_boxes.to(boxes.dtype), boxes)
    same = (ref_labels.to(labels.device)[:, None] == labels[None, :]).to(scores.dtype)
    return (iou * scores[None, :] * same).amax(dim=1)


def _thresholds_holder(net: nn.Module) -> Any:
    """The object whose ``score_thresh`` / ``nms_thresh`` / ``detections_per_img`` filter the
    output: Faster R-CNN's ROI heads, the one-stage detectors themselves."""
    holder = getattr(net, "roi_heads", net)
    if not all(hasattr(holder, k) for k in ("score_thresh", "nms_thresh", "detections_per_img")):
        raise ValueError(f"{type(net).__name__} is not a torchvision detector (no score_thresh / nms_thresh / detections_per_img)")
    return holder


@contextmanager
def thresholds(net: nn.Module, score: float, nms: Optional[float] = None, keep: Optional[int] = None) -> Iterator[None]:
    """The detector's score threshold (and optionally NMS IoU threshold and detections kept)
    set inside the block, restored after (also after an error)."""
    holder = _thresholds_holder(net)
    keys = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")
    saved = {k: getattr(holder, k) for k in keys if hasattr(holder, k)}
    try:
        holder.score_thresh = float(score)
        if nms is not None:
            holder.nms_thresh = float(nms)
        if keep is not None:
            holder.detections_per_img = int(keep)
        yield
    finally:
        for k, v in saved.items():
            setattr(holder, k, v)


def candidates(net: nn.Module, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Every candidate detection of each image of ``x`` (``(B, 3, H, W)``, pixels in [0, 1]): score
    threshold 0, no NMS (IoU threshold 1 suppresses nothing), no cap. Differentiable in ``x``."""
    with thresholds(net, 0.0, nms=1.0, keep=_ALL):
        return net(list(x))


class DetectionScores(nn.Module):
    """``forward(x) -> (B, K)``: for each image of ``x`` (pixels in [0, 1]) the similarity to each
    of the K reference detections (``similarity`` over ``candidates``). The network's children
    become this module's, under the same names; the references are fixed for the wrapper's life
    (``with_references`` gives another wrapper of the same network)."""

    #: the outputs are scores already (no softmax before weighting masks: ``cnnviz.methods.drise``)
    output_is_score = True

    def __init__(self, net: nn.Module, boxes: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                 default_layer: Optional[str] = None):
        super().__init__()
        _thresholds_holder(net)
        if any(True for _ in net.named_parameters(recurse=False)) or any(True for _ in net.named_buffers(recurse=False)):
            raise ValueError("DetectionScores wraps networks whose parameters all live in child modules")
        for name, child in net.named_children():
            self.add_module(name, child)
        # held outside the module tree, whose children are ours already (one name per layer)
        self._net = (net,)
        self.training = net.training  # a new wrapper of an eval-mode detector is in eval mode too
        self.ref_boxes = torch.zeros(0, 4) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        self.ref_labels = torch.zeros(0, dtype=torch.int64) if labels is None else torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if len(self.ref_boxes) != len(self.ref_labels):
            raise ValueError(f"{len(self.ref_boxes)} reference boxes but {len(self.ref_labels)} labels")
        self.default_layer = default_layer

    @property
    def net(self) -> nn.Module:
        return self._net[0]

    def with_references(self, boxes, labels) -> "DetectionScores":
        """A wrapper of the same network scoring the detections ``boxes`` (``(K, 4)``, input pixels)
        of classes ``labels`` (``(K,)``)."""
        return DetectionScores(self.net, boxes, labels, self.default_layer)

    def train(self, mode: bool = True) -> "DetectionScores":
        super().train(mode)
        self.net.training = mode  # torchvision's forward reads the network's own flag
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net.training:
            raise RuntimeError("DetectionScores runs the detector in eval mode (in training mode it needs ground truth)")
        outs = candidates(self.net, x)
        boxes, labels = self.ref_boxes.to(x.device), self.ref_labels.to(x.device)
        return torch.stack([similarity(o["boxes"], o["labels"], o["scores"], boxes, labels) for o in outs]).to(x.dtype)


@dataclass(frozen=True)
class Detections:
    """A detector's output on one image, above a score threshold after NMS (numpy arrays)."""

    boxes: np.ndarray   # (N, 4) input pixels
    labels: np.ndarray  # (N,)
    scores: np.ndarray  # (N,)


def detect(model: nn.Module, x: torch.Tensor, score_threshold: float) -> Detections:
    """The detections of the single image ``x`` (``(1, 3, H, W)``) scoring at least ``score_threshold``,
    with the detector's own NMS, best first; eval mode, the model's state restored."""
    net = model.net if isinstance(model, DetectionScores) else model
    with model_state_kept(model), torch.no_grad(), thresholds(net, score_threshold):
        out = net([x[0]])[0]
    keep = out["scores"] >= score_threshold
    return Detections(*(out[k][keep].detach().cpu().numpy() for k in ("boxes", "labels", "scores")))


# --- detection targets ---------------------------------------------------------------------


DETECTION_FORMS = "target=detections | target={class: c} | target={box: [x0, y0, x1, y1], class: c}"


@dataclass(frozen=True)
class DetectionRequest:
    """What a detection run explains on each image: ``detections`` (every detection), ``class``
    (those of ``cls``) or ``box`` (the detection of ``cls`` best matching ``box``, original-image
    pixels), above ``score_threshold``, at most ``max_detections`` per image."""

    kind: str
    cls: Optional[int] = None
    box: Optional[tuple[float, ...]] = None
    score_threshold: float = 0.5
    max_detections: int = 10
    per_box: bool = False

    def __str__(self) -> str:
        if self.kind == "detections":
            return "detections"
        if self.kind == "class":
            return f"class{self.cls}"
        return "box[" + ",".join(f"{v:g}" for v in self.box) + f"]/class{self.cls}"


@dataclass(frozen=True)
class DetectionItem:
    """One item of a detection run: reference ``index`` of its image's wrapper, its box (input
    pixels), class, name and score; ``source``: ``detected`` or ``given box`` (no detection matched)."""

    request: str
    index: int
    box: tuple[float, float, float, float]
    label: int
    label_name: str
    score: float
    source: str = "detected"
    per_box: bool = False

    def __str__(self) -> str:
        return f"{self.request}#d{self.index}"

    @property
    def caption(self) -> str:
        return f"{self.label_name or self.label} {self.score:.2f}"


#: ``model.score_threshold`` when it is null: trained weights, and a seeded random init
TRAINED_THRESHOLD, RANDOM_INIT_THRESHOLD = 0.5, 0.0


def split_detection_target(target: Any, cfg_model: Any, is_detector: bool) -> tuple[Any, Optional[DetectionRequest]]:
    """For a detector: ``(None, DetectionRequest)`` from ``target`` (``DETECTION_FORMS``; null means
    ``detections``) and the model keys ``score_threshold``, ``max_detections``, ``per_box``. For any
    other model ``target`` unchanged and None; a detection target for it is a ConfigError."""
    is_det_target = target == "detections" or (isinstance(target, dict) and "box" in target)
    if not is_detector:
        if is_det_target:
            raise ConfigError(f"target={target} needs a detector (model=torchvision_detection); this model gives class "
                              "logits: use target=<class index>")
        return target, None
    options = {"score_threshold": cfg_model.get("score_threshold"), "max_detections": cfg_model.get("max_detections"),
               "per_box": cfg_model.get("per_box")}
    options = {k: v for k, v in options.items() if v is not None}
    # null: 0.5 for trained weights. A random init (weights: null) scores every class about 1/91, so a
    # threshold would select nothing: it explains its best max_detections candidates, and says so.
    random_init = cfg_model.get("weights") is None
    threshold = options.get("score_threshold", RANDOM_INIT_THRESHOLD if random_init else TRAINED_THRESHOLD)
    if random_init and "score_threshold" not in options:
        log.warning("model.weights=null: a randomly initialised detector scores every class about equally; explaining "
                    "its best %s candidate(s) per image (model.score_threshold=%s; set it to choose)",
                    options.get("max_detections", 10), RANDOM_INIT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ConfigError(f"model.score_threshold={threshold!r}: must be a number in [0, 1]")
    cap = options.get("max_detections", 10)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"model.max_detections={cap!r}: must be an integer >= 1")
    common = dict(score_threshold=float(threshold), max_detections=cap, per_box=bool(options.get("per_box", False)))
    if target is None or target == "detections":
        return None, DetectionRequest("detections", **common)
    if not isinstance(target, dict):
        raise ConfigError(f"target={target!r}: a detector's target is one of {DETECTION_FORMS}")
    for key in target:
        if key not in ("class", "box"):
            raise unknown("detection target key", "target", str(key), ["class", "box"])
    cls = target.get("class")
    if isinstance(cls, bool) or not isinstance(cls, int) or cls < 0:
        raise ConfigError(f"target.class={cls!r}: a detection target needs a class index >= 0 ({DETECTION_FORMS})")
    if "box" not in target:
        return None, DetectionRequest("class", cls, **common)
    box = target["box"]
    if (not isinstance(box, (list, tuple)) or len(box) != 4 or
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box) or
            not (box[0] < box[2] and box[1] < box[3])):
        raise ConfigError(f"target.box={box!r}: must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1 (original-image pixels, "
                          "as image.<key>.box)")
    return None, DetectionRequest("box", cls, tuple(float(v) for v in box), **common)


def references(model: DetectionScores, x: torch.Tensor, request: DetectionRequest, class_names: Sequence[str],
               box_in_input: Optional[Sequence[float]] = None) -> tuple[DetectionScores, list[DetectionItem]]:
    """The wrapper scoring the detections ``request`` selects on the single image ``x``, and one
    item per detection (best first, at most ``max_detections``). A box request takes the detection
    of its class with the highest IoU (at least ``MATCH_IOU``) with ``box_in_input``; when none
    matches, the box itself is the reference (``source="given box"``, its score the wrapper's on
    ``x``). Empty when nothing is detected."""
    dets = detect(model, x, request.score_threshold)
    boxes, labels, scores = dets.boxes, dets.labels, dets.scores
    source = "detected"
    if request.kind in ("class", "box"):
        keep = labels == request.cls
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    if request.kind == "box":
        ref = np.asarray(box_in_input, dtype=np.float32)[None]
        iou = box_iou(torch.as_tensor(ref), torch.as_tensor(boxes, dtype=torch.float32))[0].numpy() if len(boxes) else np.zeros(0)
        if len(iou) and iou.max() >= MATCH_IOU:
            best = int(iou.argmax())
            boxes, labels, scores = boxes[best:best + 1], labels[best:best + 1], scores[best:best + 1]
        else:
            boxes, labels, source = ref, np.array([request.cls]), "given box"
            with model_state_kept(model), torch.no_grad():
                scores = model.with_references(boxes, labels)(x[:1]).cpu().numpy()[0]
    n = min(len(boxes), request.max_detections)
    boxes, labels, scores = boxes[:n], labels[:n], scores[:n]
    items = [DetectionItem(str(request), k, tuple(float(v) for v in boxes[k]), int(labels[k]),
                           class_names[int(labels[k])] if int(labels[k]) < len(class_names) else str(int(labels[k])),
                           float(scores[k]), source, request.per_box) for k in range(n)]
    return model.with_references(boxes, labels), items


def default_layer(module: nn.Module, configured: Optional[str]) -> Optional[str]:
    """``model.default_layer`` when set, else a detector's own (``DEFAULT_LAYERS``)."""
    return configured or getattr(module, "default_layer", None) if isinstance(module, DetectionScores) else configured


# --- the loader ----------------------------------------------------------------------------


def _offline_weights(name: str, weights: str):
    try:
        return torchvision_weights(name, weights)
    except ConfigError as e:
        raise ConfigError(f"model.weights={weights} for {name}: {e}. Note that the detector's weights include its "
                          "backbone's; model.weights=null needs no file at all") from None


@model_loader
def torchvision_detection(name: str = "fasterrcnn_mobilenet_v3_large_320_fpn", weights: Optional[str] = "DEFAULT",
                          seed: int = 0) -> LoadedModel:
    """A torchvision detector (``DEFAULT_LAYERS`` names them) wrapped in ``DetectionScores``;
    ``weights``: an enum name (``DEFAULT``, ``COCO_V1``; downloaded by torchvision when online, a
    ConfigError saying where to put the file offline) or null: a seeded random init with no backbone
    download either (``weights_backbone=None``). Class names: COCO's, from the weights enum's meta
    (no download). The input is pixels in [0, 1]: the detector normalises and resizes it itself."""
    import torchvision.models as tvm

    if name not in DEFAULT_LAYERS:
        raise unknown("torchvision detector", "model.name", str(name), list(DEFAULT_LAYERS))
    enum = tvm.get_model_weights(name)
    categories = list(enum.DEFAULT.meta.get("categories") or [])
    layer = DEFAULT_LAYERS[name]
    if weights is None:
        net = _seeded(seed, lambda: tvm.get_model(name, weights=None, weights_backbone=None))
        return LoadedModel(DetectionScores(net, default_layer=layer).eval(), name, f"random(seed={seed})", None, categories)
    if weights == "DEFAULT":
        weights = enum.DEFAULT.name
    w, cached = _offline_weights(name, weights)
    net = tvm.get_model(name, weights=w)  # reads the cached file (torchvision's frozen BatchNorms, as trained)
    return LoadedModel(DetectionScores(net, default_layer=layer).eval(), name, weights, file_sha256(cached),
                       list(w.meta.get("categories") or []), origin=f"model.weights: {name} {weights} '{cached}'")
