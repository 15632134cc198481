"""Which method, which layer? A manifest's metric columns as one ranked table.

Per model × method × layer: the number of maps ``n`` (images × targets) and the mean and standard
deviation (ddof 1) of every metric column over them. When both deletion and insertion were
measured, each map also gets ``insertion_minus_deletion`` = insertion AUC − deletion AUC (high
when the map finds the pixels the class needs and nothing else), and ``rank`` orders by its mean;
otherwise ``rank`` follows the first measured of insertion, deletion, pointing game,
completeness error, sanity ρ, sanity SSIM. ``rank_<metric>`` ranks by each metric on its own
(1 = best: higher AUC for insertion, lower for deletion, completeness error and the sanity
similarities, which a faithful map drives to 0). Knows rows, not techniques.

Example::

    table = summarize(pd.read_csv("sweep/manifest.csv"))
    table[["rank", "method", "layer", "insertion_minus_deletion_mean"]]
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .files import atomic_write
from ..metrics import metric_columns

DIFFERENCE = "insertion_minus_deletion"
#: which metric ranks the table when the difference is not available, in order of preference
PRIMARY = (DIFFERENCE, "insertion_auc", "deletion_auc", "pointing_game", "relevance_mass", "relevance_rank", "completeness_error",
           "sanity_spearman", "sanity_ssim")
GROUP = ["model", "method", "layer"]


def measured(frame: pd.DataFrame) -> dict[str, bool]:
    """The metric columns of ``frame`` that hold at least one value -> higher is better."""
    directions = {DIFFERENCE: True, **metric_columns()}
    cols = {c: up for c, up in directions.items() if c in frame and pd.to_numeric(frame[c], errors="coerce").notna().any()}
    if DIFFERENCE not in frame and {"insertion_auc", "deletion_auc"} <= set(cols):
        cols = {DIFFERENCE: True, **cols}
    return cols


def ranked_by(frame: pd.DataFrame) -> Optional[str]:
    cols = measured(frame)
    return next((c for c in PRIMARY if c in cols), next(iter(cols), None))  # else the first measured metric


def prepared(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, bool], list[str]]:
    """The rows the table is made of: the ``ok`` rows with every measured metric column numeric (and
    ``insertion_minus_deletion`` per row when both were measured), the group keys as strings (an
    empty cell is ""); the measured columns -> higher is better; the group keys present."""
    ok = frame[frame["status"] == "ok"].copy() if "status" in frame else frame.copy()
    cols = measured(ok)
    for c in cols:
        if c != DIFFERENCE:
            ok[c] = pd.to_numeric(ok[c], errors="coerce")
    if DIFFERENCE in cols:
        ok[DIFFERENCE] = ok["insertion_auc"] - ok["deletion_auc"]
    keys = [k for k in GROUP if k in ok]
    for k in keys:
        ok[k] = ["" if not isinstance(v, str) and pd.isna(v) else str(v) for v in ok[k]]
    return ok, cols, keys


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """The ranked table (empty when ``frame`` has no metric values). ``<metric>_n`` counts the maps
    that have a value of the metric (a metric may skip a map, e.g. one without a class target)."""
    ok, cols, keys = prepared(frame)
    if not cols or ok.empty:
        return pd.DataFrame()
    grouped = ok.groupby(keys, sort=False)
    table = grouped.size().rename("n").to_frame()
    for c in cols:
        table[f"{c}_mean"] = grouped[c].mean()
        table[f"{c}_std"] = grouped[c].std(ddof=1)
        table[f"{c}_n"] = grouped[c].count()
    if "metrics_ms" in ok:
        table["metrics_ms_mean"] = grouped["metrics_ms"].apply(lambda s: pd.to_numeric(s, errors="coerce").mean())
    primary = ranked_by(ok)
    for c, up in cols.items():
        table[f"rank_{c}"] = table[f"{c}_mean"].rank(ascending=not up, method="min", na_option="bottom").astype(int)
    table["rank"] = table[f"rank_{primary}"]
    table = table.reset_index()
    table = table[["rank"] + [c for c in table.columns if c != "rank"]]
    table = table.sort_values(["rank"] + keys, kind="stable").reset_index(drop=True)
    table.attrs["ranked_by"] = primary
    return table


def label(row: pd.Series) -> str:
    return " @ ".join(p for p in (str(row.get("method", "")), str(row.get("layer", "") or "")) if p)


def summary_plot(table: pd.DataFrame) -> bytes:
    """One panel per metric: mean ± std per method @ layer, best-ranked at the top (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c[:-5] for c in table.columns if c.endswith("_mean") and c != "metrics_ms_mean"]
    labels = [label(r) + (f" [{r['model']}]" if table["model"].nunique() > 1 else "") if "model" in table else label(r)
              for _, r in table.iterrows()]
    y = np.arange(len(table))
    fig, axes = plt.subplots(1, len(cols), figsize=(2.8 * len(cols) + 2, 0.32 * len(table) + 1.4), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], cols):
        ax.barh(y, table[f"{c}_mean"], xerr=table[f"{c}_std"].fillna(0), color="tab:blue", alpha=0.7, capsize=2)
        ax.set_title(c.replace("_", " ") + (" (ranks)" if c == table.attrs.get("ranked_by") else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.axvline(0, color="k", lw=0.5)
    axes[0][0].set_yticks(y, labels)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_summary(folder: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """``summary.csv``, ``summary.png`` and the page ``summary.html`` (``report.write_report``: ranking
    table, box plots, mean curves; linked from ``index.html``) in ``folder`` from a manifest frame;
    nothing is written (and the empty table returned) when the frame has no metric values."""
    from .report import write_report  # report builds on this module's table

    table = summarize(frame)
    if not table.empty:
        folder = Path(folder)
        atomic_write(folder / "summary.csv", table.to_csv(index=False).encode())
        atomic_write(folder / "summary.png", summary_plot(table))
        write_report(folder, frame, table)
    return table


def printable(table: pd.DataFrame, width: Optional[int] = None) -> str:
    """The table as text: ``mean ± std`` per metric for each ``rank method @ layer`` (and model when
    there are several), wrapped at ``width`` characters (default: the terminal's, else 160) in blocks
    of metric columns, each block labelled by its rows, so that fourteen metrics stay readable."""
    import shutil

    if table.empty:
        return "no metric values (run with metrics=[deletion,insertion,...])"
    several = "model" in table and table["model"].nunique() > 1
    shown = pd.DataFrame(index=[f"{r['rank']:>3} {label(r)}" + (f" [{r['model']}]" if several else "")
                                for _, r in table.iterrows()])
    shown["n"] = table["n"].to_numpy()
    for c in [c[:-5] for c in table.columns if c.endswith("_mean") and c != "metrics_ms_mean"]:
        shown[c] = [f"{m:.3f} ± {s:.3f}" if pd.notna(s) else (f"{m:.3f}" if pd.notna(m) else "")
                    for m, s in zip(table[f"{c}_mean"], table[f"{c}_std"])]
    if "metrics_ms_mean" in table:
        shown["metrics_ms"] = table["metrics_ms_mean"].round(0).to_numpy()
    width = width or shutil.get_terminal_size((160, 24)).columns
    return f"ranked by {table.attrs.get('ranked_by')}\n" + shown.to_string(line_width=width)
