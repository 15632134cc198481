"""The benchmark's targets as data: what is compared, the limit, and which way it must hold.

``report.targets`` prints one MET / MISSED line per entry it can evaluate; a limit is never loosened to
turn a MISSED into a MET (the measured numbers are in docs/performance.md)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    """``limit`` on a measured ratio; ``at_most``: the ratio must be <= limit, else >= limit."""
    what: str
    limit: float
    at_most: bool = True

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit


THRESHOLDS: dict[str, Threshold] = {t.what: t for t in (
    Threshold("cams_x_floor", 0.6),             # worst gradient CAM / one forward + backward
    Threshold("gradients_x_floor", 1.1),        # worst of vanilla / guided / deconvnet / grad_times_image
    Threshold("layers16_x_floor", 1.3),         # vgg19: Grad-CAM at all 16 convolutions in one compute
    Threshold("layers16_x_loop", 20, at_most=False),   # ... faster than pytorch-grad-cam's per-layer loop
    Threshold("classic4_x_floor", 2.2),         # vanilla, guided, Grad-CAM, guided Grad-CAM via compute_group
    Threshold("ablationcam_x_peer", 20, at_most=False),  # faster than pytorch-grad-cam's AblationCAM
    Threshold("scorecam_x_peer", 0.8),          # cnnviz / pytorch-grad-cam ScoreCAM
    Threshold("slow_x_captum", 0.8),            # IG, SmoothGrad, occlusion / captum's best setting
    Threshold("gallery_overhead", 1.15),        # classic gallery wall / (model load + items' compute)
    # the dataset section (benchmarks/dataset.py, issue 23)
    Threshold("dataset_classic4_x_loop", 1.5, at_most=False),   # images/s batched / one image at a time
    Threshold("dataset_gradcam_x_peer", 2, at_most=False),      # pytorch-grad-cam's and torchcam's time / cnnviz's
    Threshold("dataset_metrics_x_quantus", 5, at_most=False),   # deletion + insertion: Quantus's time / cnnviz's
    Threshold("dataset_process_overhead", 1.15),  # run.py on the list: wall / (model load + compute)
    # the vision-transformer section (benchmarks/vit.py, issue 24)
    Threshold("vit_blocks_x_floor", 1.3),       # Grad-CAM at every ViT block in one compute / one forward + backward
    Threshold("vit_blocks_x_loop", 5, at_most=False),  # pytorch-grad-cam's per-block calls / cnnviz's one compute
)}
