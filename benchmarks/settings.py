"""What the benchmark runs: the models, the input, the techniques compared, their settings and the
agreement tolerances. The pass/fail targets live in ``thresholds.py``."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TARGET = 243
COLD_S = 5.0  # items whose first run is longer than this are not warmed up
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
MODELS = {  # name -> default layer, mean, std (load_model builds the network)
    "efficientnet_lite0": ("bn2", [0.5] * 3, [0.5] * 3),
    "vgg19": ("features.35", *IMAGENET),
}
GRADIENT_CAMS = {  # cnnviz name -> (pytorch-grad-cam class, torchcam class or None)
    "gradcam": ("GradCAM", "GradCAM"),
    "gradcam_plusplus": ("GradCAMPlusPlus", "GradCAMpp"),
    "xgradcam": ("XGradCAM", "XGradCAM"),
    "hirescam": ("HiResCAM", None),
    "layercam": ("LayerCAM", "LayerCAM"),
}
GRADIENTS = {  # cnnviz name -> captum class
    "vanilla_backprop": "Saliency",
    "guided_backprop": "GuidedBackprop",
    "deconvnet": "Deconvolution",
    "grad_times_image": "InputXGradient",
}
CLASSIC4 = ("vanilla_backprop", "guided_backprop", "gradcam", "guided_gradcam")  # the classic gallery's four
ITEMS = ("cams", "gradients", "classic4", "layers16", "ablation", "scorecam", "ig", "smoothgrad", "occlusion", "gallery",
         "dataset", "vit")
PER_MODEL_ITEMS = tuple(i for i in ITEMS if i not in ("gallery", "dataset", "vit"))  # run inside run_model
DATASET_IMAGES, DATASET_MAPS = 256, 64  # --quick: QUICK_DATASET_IMAGES, QUICK_DATASET_MAPS
QUICK_DATASET_IMAGES, QUICK_DATASET_MAPS = 64, 16
DATASET_STEPS = 49  # deletion / insertion steps: the divisor of 224 x 224 nearest cnnviz's default 50 (Quantus needs one)
SG_SAMPLES, SG_NOISE = 50, 0.15
IG_STEPS = 50
OCC_WINDOW, OCC_STRIDE = 15, 8
# agreement with captum: |a - b| <= ATOL_REL * max|b| + RTOL * |b| elementwise (np.allclose)
RTOL, ATOL_REL = 1e-3, 1e-4
SG_MIN_CORR = 0.9
SG_SAME_FRAC, SG_SCALE_TOL = 0.8, 0.1  # SmoothGrad: two estimates of one expectation


def load_model(name: str):
    """The model ``name`` of MODELS, loaded (imports the cnnviz loaders only when a model is needed)."""
    from cnnviz.models.loaders import efficientnet_lite0, torchvision_model

    return {"efficientnet_lite0": lambda: efficientnet_lite0().module,
            "vgg19": lambda: torchvision_model("vgg19", None).module}[name]()
