"""Time cnnviz next to captum, pytorch-grad-cam and torchcam, side by side in one run.

    python -m benchmarks [--quick] [--models efficientnet_lite0 vgg19] [--repeats 5] [--threads 2]
                         [--items cams gradients classic4 layers16 ablation scorecam ig smoothgrad occlusion gallery
                                  dataset vit] [--dataset-images 256] [--dataset-maps 64] [--dataset-steps 49]
    (or python benchmarks/run.py with the same options)

cnnviz runs with the accelerations ``python run.py`` uses (``fast_copy`` and ``reuse_memory`` of
conf/config.yaml, ``model.streams`` of the model's preset; ``--exact``: no fast copy), which the
library API leaves off. The MET / MISSED limits are the table in ``benchmarks/thresholds.py``.

Models: efficientnet_lite0 (embedded weights, layer bn2, mean = std = 0.5) and vgg19 (random
weights, layer features.35, ImageNet statistics); one 1x3x224x224 input (seeded), target class 243.

Prints ONE table: model, technique, library, median ms, ratio to the floor (one forward plus one
backward of the target logit down to the input, on the same model, in the same run), ratio to the
best peer at equal settings (cnnviz rows only: < 1 means cnnviz is faster), peak RSS so far; then
the agreement checks (integrated gradients, SmoothGrad, occlusion against captum) and the target
ratios with MET / MISSED.

Timing: every item runs once untimed (warm-up), then ``--repeats`` timed runs (slow items: one);
an item whose first run takes over 5 s is not warmed up: that first run is its (only or first)
timed run, and the table says "cold". IG, SmoothGrad and occlusion then run cnnviz and captum's
fastest setting ``--slow-repeats`` more times as back-to-back pairs (order swapped every pair); their
ratio to captum is the median of the pairs' ratios, so the machine's drift between rows (15-40 % on
this shared 2-vCPU machine) cancels within each pair. Peers get a fresh ``copy.deepcopy`` of the model each (made
outside the timed region) and their hooks are always released. ``--quick``: 2 repeats, generic rows
on efficientnet_lite0 only, plus the vgg19-only rows (16-layer Grad-CAM, cnnviz's Ablation-CAM), captum
at cnnviz's batch only (IG internal_batch_size 10, NoiseTunnel 10, Occlusion perturbations_per_eval 16;
the full run tries None/10/25, None/10/25 and 1/16/64), no torchcam ScoreCAM and no pytorch-grad-cam
AblationCAM (512 channels x a full vgg19 forward: 2.4 of the 5 minutes a quick run took with it); about
2.5 minutes on 2 cores.
``dataset`` (benchmarks/dataset.py): a list of generated images through cnnviz batched vs one image at a
time, Grad-CAM vs pytorch-grad-cam and torchcam, deletion + insertion vs Quantus, and run.py's whole-process
overhead; --quick: 64 images and 16 maps instead of 256 and 64.
The full run takes about 45 minutes on 2 cores (vgg19 occlusion: 729-784 vgg19 forwards per
library and batch setting).
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-/Ablation-CAM print tqdm bars

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):  # run as a script (python benchmarks/run.py): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.dataset import run_dataset, target_lines as dataset_lines  # noqa: E402
from benchmarks.harness import Bench  # noqa: E402
from benchmarks.report import agreement, table, targets, git_rev, versions  # noqa: E402
from benchmarks.settings import (ATOL_REL, COLD_S, DATASET_IMAGES, DATASET_MAPS, DATASET_STEPS,  # noqa: E402
                                 ITEMS, MODELS, PER_MODEL_ITEMS, QUICK_DATASET_IMAGES, QUICK_DATASET_MAPS, RTOL,
                                 SG_MIN_CORR, SG_NOISE, SG_SAMPLES, TARGET)
from benchmarks.suites import classic_gallery, run_model, streams_used  # noqa: E402
from benchmarks.thresholds import THRESHOLDS  # noqa: E402
from benchmarks.vit import run_vit, target_lines as vit_lines  # noqa: E402
from cnnviz.speed import memory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, generic rows on efficientnet_lite0 only, "
                    "vgg19-only rows kept but pytorch-grad-cam's AblationCAM, smaller captum batch grids, no torchcam "
                    "ScoreCAM (about 2.5 min on 2 cores)")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None,
                    help="models for the generic rows (default: both; --quick: efficientnet_lite0). Model-specific rows "
                         "(scorecam on efficientnet_lite0; 16-layer Grad-CAM and ablationcam on vgg19) run when their "
                         "model is listed, or always when --models is not given")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per item (default 5; --quick 2); slow items: 1")
    ap.add_argument("--slow-repeats", type=int, default=None,
                    help="side-by-side pairs of cnnviz and the fastest captum setting for IG / SmoothGrad / "
                         "occlusion, the order swapped every pair (default 3; --quick 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--items", nargs="+", choices=ITEMS, default=list(ITEMS), help="a subset of the comparisons")
    ap.add_argument("--scorecam-layer", default=None,
                    help="efficientnet_lite0 layer for the Score-CAM rows (default bn2, 1280 channels)")
    ap.add_argument("--dataset-images", type=int, default=None,
                    help=f"dataset section: images in the list (default {DATASET_IMAGES}; --quick {QUICK_DATASET_IMAGES})")
    ap.add_argument("--dataset-maps", type=int, default=None,
                    help=f"dataset section: Grad-CAM maps measured by deletion + insertion against Quantus "
                         f"(default {DATASET_MAPS}; --quick {QUICK_DATASET_MAPS})")
    ap.add_argument("--dataset-steps", type=int, default=DATASET_STEPS,
                    help=f"dataset section: deletion / insertion steps, a divisor of 224 x 224 (default {DATASET_STEPS})")
    ap.add_argument("--exact", action="store_true",
                    help="run cnnviz on the models as given, without its BatchNorm-folded channels-last copy "
                         "(cnnviz.speed.fastpath); the peers always run the models as given")
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.slow_repeats is None:
        args.slow_repeats = 0 if args.quick else 3
    if args.dataset_images is None:
        args.dataset_images = QUICK_DATASET_IMAGES if args.quick else DATASET_IMAGES
    if args.dataset_maps is None:
        args.dataset_maps = QUICK_DATASET_MAPS if args.quick else DATASET_MAPS
    args.dataset_maps = min(args.dataset_maps, args.dataset_images)
    args.ig_batches = [10] if args.quick else [None, 10, 25]
    args.sg_batches = [10] if args.quick else [None, 10, 25]
    args.occ_batches = [16] if args.quick else [1, 16, 64]
    torch.set_num_threads(args.threads)
    memory.settle()  # every row, peers included, under the malloc settings cnnviz's batched calls leave
    warnings.filterwarnings("ignore")  # captum's "input did not require grad", hook-on-inplace notices
    generic_models = args.models or (["efficientnet_lite0"] if args.quick else list(MODELS))
    specific_models = args.models or list(MODELS)
    load0 = os.getloadavg()
    b = Bench(args)
    wall0 = time.perf_counter()
    for name in MODELS:
        generic, specific = name in generic_models, name in specific_models
        if (generic or specific) and set(args.items) & set(PER_MODEL_ITEMS):
            run_model(b, name, generic, specific)
    gallery = classic_gallery(b, args.repeats) if "gallery" in args.items else []
    data = run_dataset(args, b.log) if "dataset" in args.items else None
    vit = run_vit(args, b.log) if "vit" in args.items else None
    wall = time.perf_counter() - wall0
    load1 = os.getloadavg()

    print(f"cnnviz {git_rev()}; {versions()}")
    print(f"1x3x224x224 input (seeded randn), target {TARGET}, {torch.get_num_threads()} threads, "
          f"{'--quick, ' if args.quick else ''}{'--exact (no fast copy), ' if args.exact else 'fast copy on, '}median of {args.repeats} after 1 warm-up (slow items: 1 timed run; "
          f"IG / SmoothGrad / occlusion: then {args.slow_repeats} side-by-side pairs of cnnviz and captum's fastest setting)")
    print("IG / SmoothGrad streams (model.streams of conf/model/<name>.yaml, as run.py uses them): "
          + ", ".join(f"{m} {streams_used(m)}" for m in dict.fromkeys(r.model for r in b.rows)))
    print(f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; "
          f"{os.cpu_count()} CPUs")
    print()
    print(table(b.rows))
    print()
    print("x floor: median / the same model's floor: one forward + one backward of the target logit to the input.")
    print("  Rows timed several times take turns with the floor (technique, floor, technique, floor, ...) and divide by")
    print("  the median of those floor runs, so both see the machine at the same speed; rows timed once (slow) divide")
    print("  by the floor rows' runs pooled (timed before and after the model's other rows).")
    print("x best peer: cnnviz median / the fastest peer row of the same model and comparison (< 1: cnnviz faster);")
    print("  IG / SmoothGrad / occlusion (timed once each, then in pairs): the median of the pairs' ratios, each pair")
    print("  run back to back (cnnviz first in odd pairs, captum first in even ones); the targets print both.")
    print("  peers are blank. 'reference' rows (cnnviz run separately) are not peers.")
    print("peak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss, the process peak so far (monotonic; includes the")
    print("  models and the peers' deep copies), not the row's own footprint.")
    print(f"runs: timed runs; 'cold' = the first run took > {COLD_S:.0f} s, so it was not warmed up and counts as a timed run.")
    print("peers: each on its own copy.deepcopy of the model (made untimed); pytorch-grad-cam in `with Cls(...) as cam:`,")
    print("  torchcam with remove_hooks(); captum copies have ReLU/ReLU6 inplace=False. pytorch-grad-cam, torchcam and")
    print("  captum LayerGradCam rows include their upsampling to 224x224 (cnnviz CAMs return it too).")
    print("captum GuidedBackprop / Deconvolution rewrite only nn.ReLU: on efficientnet_lite0 (ReLU6) they compute the")
    print("  plain gradient, so those rows time the same passes but not the same rule.")
    print("captum Occlusion slides one extra, clipped window per axis (ceil((224-15)/8)+1 = 28 starts vs 27): 784 vs 729")
    print("  occluded images; the agreement check compares only pixels covered by the same windows.")
    print("pytorch-grad-cam ScoreCAM has no batch argument: it uses 16 (getattr(self, 'batch_size', 16)); its AblationCAM")
    print("  defaults to batch_size=32; torchcam ScoreCAM defaults to 32; cnnviz scorecam 16, ablationcam 64.")
    print("cnnviz scorecam skips channels that are constant on the input ('k/C channels vary' in its row); the peers")
    print("  forward every channel's masked image. The input is seeded noise, not a photograph.")
    print("malloc: cnnviz's batched techniques (IG, SmoothGrad, occlusion, Score-CAM, Ablation-CAM) keep freed memory")
    print("  in malloc's heap between their batches (cnnviz/speed/memory.py); outside those calls every row, peers included,")
    print("  runs with glibc's thresholds fixed at their dynamic maxima (mmap > 32 MB, trim > 64 MB), set at start.")
    if args.quick:
        skipped = ["pytorch-grad-cam AblationCAM (about 2.5 minutes; so no ablationcam target line)"]
        if not args.scorecam_layer:
            skipped.insert(0, "torchcam ScoreCAM (about one minute)")
        print(f"--quick: {' and '.join(skipped)} skipped; the full benchmark runs them.")
    print()
    print(f"agreement (np.allclose, rtol={RTOL:g}, atol={ATOL_REL:g} x max|captum|, elementwise). SmoothGrad is compared")
    print("  elementwise with captum's NoiseTunnel fed cnnviz's noise draws (torch.normal replaced for that call); the")
    print(f"  timed runs draw their own noise, so they are compared only loosely: Pearson r > {SG_MIN_CORR}; with {SG_SAMPLES} samples")
    print(f"  at noise {SG_NOISE} two runs of ONE library correlate far below that, so the captum-vs-captum r is printed for")
    print("  scale, with a same-estimator check. 'the same network': captum run on cnnviz's fast copy (channels-last,")
    print("  BatchNorm folded), or cnnviz with fast_copy off on the model as given:")
    for line in agreement(b) or ["(no agreement items run)"]:
        print("  " + line)
    print()
    print("targets (measured above, never loosened):")
    for line in targets(b) or ["(no target items run)"]:
        print("  " + line)
    if gallery:
        ratio = statistics.median(t["overhead"] for t in gallery)
        limit = THRESHOLDS["gallery_overhead"]
        verdict = "MET   " if limit.met(ratio) else "MISSED"
        print(f"  {verdict} classic 12-item gallery in one job: wall <= {limit.limit:g} x (model load + items' compute): "
              f"median {ratio:.3f} over {len(gallery)} run(s) (" + ", ".join(
                  f"{t['wall_s']:.2f} s / ({t['load_s']:.2f} + {t['compute_s']:.2f})" for t in gallery) + ")")
    if data is not None:
        print()
        print(f"dataset section (benchmarks/dataset.py): {args.dataset_images} generated 224x224 images, "
              f"batch_size {data.get('batch_size')} (the runner's default), {args.dataset_maps} maps x "
              f"{args.dataset_steps} steps for deletion + insertion{' (--quick)' if args.quick else ''}; "
              "contenders take turns chunk by chunk:")
        for line in dataset_lines(data):
            print("  " + line)
    if vit is not None:
        print()
        print("vit section (benchmarks/vit.py): Grad-CAM at every block of a random-init timm ViT, one 1x3x224x224 input:")
        for line in vit_lines(vit):
            print("  " + line)
    print()
    print(f"total wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
