"""The report: the table (x floor, x best peer), the agreement lines against captum and the targets
(limits from ``thresholds.py``), with the run's git revision and library versions."""
from __future__ import annotations

import statistics
import subprocess
from typing import Optional

import numpy as np
import torch

from benchmarks.harness import Bench, Row, as_array, best_peer
from benchmarks.settings import (ATOL_REL, GRADIENT_CAMS, GRADIENTS, IG_STEPS, OCC_STRIDE, OCC_WINDOW, ROOT, RTOL,
                                 SG_MIN_CORR, SG_SAME_FRAC, SG_SCALE_TOL)
from benchmarks.suites import streams_used
from benchmarks.thresholds import THRESHOLDS as T


def floor_ms(rows: list[Row], model: str) -> Optional[float]:
    """The median of every timed floor run of the model (measured before and after its other rows)."""
    times = [t for r in rows if r.model == model and r.group == "floor" for t in r.times]
    return statistics.median(times) if times else None


def x_floor(rows: list[Row], r: Row) -> Optional[float]:
    """``r``'s median over its floor: the floor runs interleaved with its own where it has them, else the
    model's pooled floor rows."""
    fl = statistics.median(r.floor_times) if r.floor_times else floor_ms(rows, r.model)
    return r.ms / fl if r.ms is not None and fl else None


def x_peer(rows: list[Row], r: Row) -> Optional[float]:
    """cnnviz ``r`` over the best peer: the median of its side-by-side pair ratios where it has them
    (slow items), else the ratio of the two medians. Should another peer row have ended up with a lower
    median than the paired one, the paired ratio is scaled by the two peers' medians (never lowered)."""
    peer = best_peer(rows, r) if r.library == "cnnviz" else None
    if r.pair_ratios and peer:
        return statistics.median(r.pair_ratios) * max(1.0, r.pair_peer.ms / peer.ms)
    return r.ms / peer.ms if peer and r.ms is not None else None


def table(rows: list[Row]) -> str:
    head = ["model", "technique", "library", "median ms", "x floor", "x best peer", "peak RSS MB", "runs / note"]
    lines = []
    for r in rows:
        xf, xp = x_floor(rows, r), x_peer(rows, r)
        runs = f"{r.runs}{' cold' if r.cold else ''}" if r.ms is not None else ""
        runs = ", ".join(p for p in (runs, r.note) if p)
        lines.append([
            r.model, r.technique, r.library,
            f"{r.ms:.1f}" if r.ms is not None else r.error,
            f"{xf:.2f}" if xf is not None else "",
            f"{xp:.3f}" if xp is not None else "",
            f"{r.rss_mb:.0f}",
            runs,
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    right = {3, 4, 5, 6}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right and not c.startswith("error") else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [fmt(head), "  ".join("-" * w for w in widths)]
    prev = None
    for l in lines:
        if prev is not None and l[0] != prev:
            out.append("")
        prev = l[0]
        out.append(fmt(l))
    return "\n".join(out)


def close(ours: np.ndarray, ref: np.ndarray) -> tuple[str, float]:
    """EQUAL / DIFFERENT at the bench's tolerance, and max|diff| / max|ref|."""
    ok = np.allclose(ours, ref, rtol=RTOL, atol=ATOL_REL * np.abs(ref).max())
    return ("EQUAL" if ok else "DIFFERENT"), float(np.abs(ours - ref).max() / np.abs(ref).max())


def agreement(b: Bench) -> list[str]:
    out = []
    for model in dict.fromkeys(r.model for r in b.rows):
        o = {k: v for (m, k), v in b.outputs.items() if m == model}
        if "ig" in o:
            ours = as_array(o["ig"][-1])
            for key in [k for k in o if k.startswith("ig_captum_")][:1]:
                ref = as_array(o[key][-1])
                out.append(f"{model}: integrated_gradients vs captum IntegratedGradients ({key[10:]}): "
                           "{} (max|diff| / max|captum| = {:.2e})".format(*close(ours, ref)))
                if "ig_exact" in o:
                    out.append(f"{model}:   cnnviz with fast_copy off (the model as given) vs captum: "
                               "{} (max|diff| / max|captum| = {:.2e}); the difference above is the fast copy's rounding "
                               "(channels-last convolutions, folded BatchNorm)".format(*close(as_array(o["ig_exact"][-1]), ref)))
                out += same_network_lines(model, o, "ig", ours)
                if "ig_cl_captum" in o:
                    out.append(f"{model}:   captum on a channels-last copy of the model vs captum on the model: "
                               "{} (max|diff| / max|captum| = {:.2e}): float32 IG moves this much with the memory layout "
                               "alone".format(*close(as_array(o["ig_cl_captum"][-1]), ref)))
                if "ig_ref64" in o:
                    exact = as_array(o["ig_ref64"][-1])
                    e_ours, e_peer = (float(np.abs(a - exact).max() / np.abs(exact).max()) for a in (ours, ref))
                    l2_ours, l2_peer = (float(np.linalg.norm(a - exact) / np.linalg.norm(exact)) for a in (ours, ref))
                    out.append(f"{model}:   against float64 (captum on a float64 copy): max|err| / max|ref| cnnviz "
                               f"{e_ours:.2e}, captum {e_peer:.2e} -> cnnviz {'no further' if e_ours <= e_peer else 'FURTHER'} "
                               f"from float64 than captum; relative L2 error cnnviz {l2_ours:.2e}, captum {l2_peer:.2e}")
        if "sg" in o and "sg_draws_captum" in o:
            ours, ref = as_array(o["sg"][-1]), as_array(o["sg_draws_captum"][-1])
            out.append(f"{model}: smoothgrad vs captum NoiseTunnel(Saliency) given cnnviz's noise draws: "
                       "{} (max|diff| / max|captum| = {:.2e})".format(*close(ours, ref)))
            if "sg_exact" in o:
                out.append(f"{model}:   cnnviz with fast_copy off (the model as given) vs captum: "
                           "{} (max|diff| / max|captum| = {:.2e})".format(*close(as_array(o["sg_exact"][-1]), ref)))
            out += same_network_lines(model, o, "sg", ours)
        if "sg" in o:
            ours = as_array(o["sg"][-1]).ravel()
            runs = [as_array(v).ravel() for k in o if k.startswith("sg_captum_") for v in o[k]]
            if runs:
                r = float(np.corrcoef(ours, runs[-1])[0, 1])
                scale = float(ours.std() / runs[-1].std())
                out.append(f"{model}: smoothgrad vs captum NoiseTunnel(Saliency), same sigma, different noise draws: "
                           f"Pearson r = {r:.3f} -> loose check r > {SG_MIN_CORR}: {'MET' if r > SG_MIN_CORR else 'NOT MET'}; "
                           f"std(cnnviz) / std(captum) = {scale:.3f}")
                if len(runs) > 1:
                    r_cc = float(np.corrcoef(runs[0], runs[-1])[0, 1])
                    same = r >= SG_SAME_FRAC * r_cc and abs(scale - 1) <= SG_SCALE_TOL
                    out.append(f"{model}:   for scale, two captum runs (different draws) give r = {r_cc:.3f}; same-estimator "
                               f"check (r >= {SG_SAME_FRAC} x captum-vs-captum r and std ratio within 1 +- {SG_SCALE_TOL}): "
                               f"{'CONSISTENT' if same else 'INCONSISTENT'}")
                else:
                    out.append(f"{model}:   (only one captum run kept: no captum-vs-captum r for scale)")
        if "occ" in o:
            ours = as_array(o["occ"][-1])
            for key in [k for k in o if k.startswith("occ_captum_")][:1]:
                ref = as_array(o[key][-1])
                # captum adds one clipped window per axis (start 216): pixels < 216 see the same windows in both
                n = ((224 - OCC_WINDOW) // OCC_STRIDE + 1) * OCC_STRIDE
                a, c = ours[..., :n, :n], ref[..., :n, :n]
                out.append(f"{model}: occlusion vs captum Occlusion ({key[11:]}), pixels [0,{n})^2: "
                           "{} (max|diff| / max|captum| = {:.2e})".format(*close(a, c)))
    return out


def same_network_lines(model: str, o: dict, key: str, ours: np.ndarray) -> list[str]:
    """cnnviz against captum run on cnnviz's fast copy; where cnnviz ran streams, also against captum with
    one intra-op thread (the arithmetic of each stream), and captum's own one-vs-two-thread difference."""
    if f"{key}_samenet_captum" not in o:
        return []
    two = as_array(o[f"{key}_samenet_captum"][-1])
    pairs = [("cnnviz vs captum run on the same network (cnnviz's fast copy)", ours, two)]
    if f"{key}_samenet1_captum" in o:
        one = as_array(o[f"{key}_samenet1_captum"][-1])
        pairs += [("the same, captum with one intra-op thread (as each cnnviz stream runs)", ours, one),
                  ("captum with one intra-op thread vs two, on the fast copy", one, two)]
    return [f"{model}:   {label}: " + "{} (max|diff| / max|captum| = {:.2e})".format(*close(a, b)) for label, a, b in pairs]


def same_network_verdict(model: str, label: str, o: dict, key: str, ref: np.ndarray) -> str:
    """Target 6's "results equal to captum's" for a gradient method: both libraries on one network, the
    fast copy (captum run on it too) and the model as given (cnnviz with fast_copy off). The fast copy is
    another network, equal as a function, whose float32 rounding the agreement lines measure (against
    float64, and captum's own change on a channels-last copy); its difference is printed alongside."""
    ours = as_array(o[key])
    samenet = as_array(o[f"{key}_samenet_captum"]) if f"{key}_samenet_captum" in o else ref  # else no copy was used
    same = [("fast copy vs captum on it", close(ours, samenet)),
            ("fast_copy off vs captum on the model", close(as_array(o[f"{key}_exact"]), ref))]
    ok = all(c[0] == "EQUAL" for _, c in same)
    across = "; across networks: fast copy vs captum on the model {} {:.1e}".format(*close(ours, ref))
    if f"{key}_cl_captum" in o:
        across += "; captum channels-last vs captum {} {:.1e}".format(*close(as_array(o[f"{key}_cl_captum"]), ref))
    if f"{key}_samenet1_captum" in o:  # printed, not part of the verdict
        across += "; fast copy vs captum on it at one intra-op thread {} {:.1e}".format(
            *close(ours, as_array(o[f"{key}_samenet1_captum"])))
    return (f"{'MET   ' if ok else 'MISSED'} {model}: {label} equal to captum's (rtol {RTOL:g}, atol {ATOL_REL:g} x max) "
            "when both run the same network: " + ", ".join(f"{lbl} {c[0]} {c[1]:.1e}" for lbl, c in same) + across)


def targets(b: Bench) -> list[str]:
    rows = b.rows
    out = []

    def get(model, group, library, note=None):
        return next((r for r in rows if r.model == model and r.group == group and r.library == library
                     and r.ms is not None and (note is None or r.note == note)), None)

    def verdict(ok):
        return "MET   " if ok else "MISSED"

    for model in dict.fromkeys(r.model for r in rows):
        fl = floor_ms(rows, model)
        if not fl:
            continue
        cams = [(c, get(model, c, "cnnviz")) for c in GRADIENT_CAMS]
        cams = [(c, x_floor(rows, r)) for c, r in cams if r]
        if cams:
            worst = max(v for _, v in cams)
            out.append(f"{verdict(T['cams_x_floor'].met(worst))} {model}: gradient CAMs <= {T['cams_x_floor'].limit:g} x floor: worst {worst:.2f} ("
                       + ", ".join(f"{c} {v:.2f}" for c, v in cams) + ")")
        grads = [(g, get(model, g, "cnnviz")) for g in GRADIENTS]
        grads = [(g, x_floor(rows, r)) for g, r in grads if r]
        if grads:
            worst = max(v for _, v in grads)
            out.append(f"{verdict(T['gradients_x_floor'].met(worst))} {model}: vanilla/guided/deconvnet/grad_times_image <= {T['gradients_x_floor'].limit:g} x floor: worst "
                       f"{worst:.2f} (" + ", ".join(f"{g} {v:.2f}" for g, v in grads) + ")")
        l16, loop = get(model, "layers16", "cnnviz"), get(model, "layers16", "pytorch-grad-cam")
        if l16:
            v = x_floor(rows, l16)
            out.append(f"{verdict(T['layers16_x_floor'].met(v))} {model}: 16-layer Grad-CAM <= {T['layers16_x_floor'].limit:g} x floor: {v:.2f}")
            if loop:
                s = loop.ms / l16.ms
                out.append(f"{verdict(T['layers16_x_loop'].met(s))} {model}: 16-layer Grad-CAM >= {T['layers16_x_loop'].limit:g}x faster than the per-layer "
                           f"pytorch-grad-cam loop: {s:.1f}x")
        c4 = next((r for r in rows if r.model == model and r.group == "classic4" and r.library == "cnnviz"
                   and r.ms is not None and "compute_group" in r.technique), None)
        if c4:
            v = x_floor(rows, c4)
            out.append(f"{verdict(T['classic4_x_floor'].met(v))} {model}: classic four (compute_group) <= {T['classic4_x_floor'].limit:g} x floor: {v:.2f}")
        ab, abp = get(model, "ablationcam", "cnnviz"), get(model, "ablationcam", "pytorch-grad-cam")
        if ab and abp:
            s = abp.ms / ab.ms
            out.append(f"{verdict(T['ablationcam_x_peer'].met(s))} {model}: ablationcam >= {T['ablationcam_x_peer'].limit:g}x faster than pytorch-grad-cam's: {s:.1f}x")
        sc, scp = get(model, "scorecam", "cnnviz"), get(model, "scorecam", "pytorch-grad-cam")
        if sc and scp:
            out.append(f"{verdict(T['scorecam_x_peer'].met(sc.ms / scp.ms))} {model}: scorecam <= {T['scorecam_x_peer'].limit:g} x pytorch-grad-cam's: {sc.ms / scp.ms:.3f}")
        for group, label in (("ig", "integrated_gradients"), ("smoothgrad", "smoothgrad"), ("occlusion", "occlusion")):
            ours = get(model, group, "cnnviz")
            peer = best_peer(rows, ours) if ours else None
            if ours and peer:
                v = x_peer(rows, ours)
                how = (f"median of {len(ours.pair_ratios)} side-by-side pairs: "
                       + ", ".join(f"{p:.3f}" for p in ours.pair_ratios)
                       + f"; ratio of the medians {ours.ms / peer.ms:.3f}") if ours.pair_ratios else "ratio of the medians"
                out.append(f"{verdict(T['slow_x_captum'].met(v))} {model}: {label} <= {T['slow_x_captum'].limit:g} x captum's best: {v:.3f} ({how}; "
                           f"best captum: {peer.technique})")
                # IG and SmoothGrad both take 50 forward + input-gradient passes at batch 10
                bound = next((r for r in rows if r.model == model and r.group == "ig" and r.library == "torch"
                              and r.ms is not None), None) if group != "occlusion" else None
                if bound:
                    out.append(f"     {model}: the convolutions alone of its {IG_STEPS} passes, in one stream, take "
                               f"{bound.ms / peer.ms:.3f} x captum's best, cnnviz ({streams_used(model)}) "
                               f"{ours.ms / bound.ms:.3f} x them")
        o = {k: v[-1] for (m, k), v in b.outputs.items() if m == model}
        ig_ref = next((v for k, v in o.items() if k.startswith("ig_captum_")), None)
        for key, label, ref in (("ig", "integrated_gradients", ig_ref), ("sg", "smoothgrad (the same noise draws)",
                                                                           o.get("sg_draws_captum"))):
            if ref is not None and key in o and f"{key}_exact" in o:
                out.append(same_network_verdict(model, label, o, key, as_array(ref)))
    return out


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "cnnviz"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes in cnnviz/" if dirty else "")
    except Exception:
        return "?"


def versions() -> str:
    out = [f"torch {torch.__version__}"]
    for mod in ("captum", "pytorch_grad_cam", "torchcam", "quantus"):
        try:
            from importlib.metadata import version
            out.append(f"{mod} {version({'pytorch_grad_cam': 'grad-cam'}.get(mod, mod))}")
        except Exception:
            out.append(f"{mod} ?")
    return ", ".join(out)
