"""``summary.html``: the metric summary as a page people read, beside ``summary.csv``.

The page holds the ranking table (rank, model, method, layer, n and ``mean ± std`` of every metric
over the group's maps), box plots of every metric across the maps of each group (``summary_box.png``:
the spread the mean hides), and for each per-map curve the manifest lists (the ``file_csv_<key>``
columns whose key ends in ``_curve``: deletion, insertion, ROAD, the sanity cascade, ...) the mean
curve over the maps of the ``top`` best-ranked groups that have it (``summary_<key>.png``, the numbers
in ``summary_curves.csv``). ``index.html`` links to it (``gallery.link_summary``).

Work stays bounded on large runs: the table and the box plots come from the manifest's columns (the
box plots show the first ``BOX_GROUPS`` groups), and curve files are read for at most ``top`` groups
per curve, at most ``CURVE_ROWS`` maps each. A curve file that is listed but missing or unreadable is
left out of its mean and counted on the page. Every link is relative, every name escaped. Knows rows
and files, never techniques: a curve CSV's first column is its x, every other column one series.

Example::

    from cnnviz.output.report import write_report
    from cnnviz.output.summary import summarize
    frame = pd.read_csv("outputs/run/manifest.csv")
    write_report("outputs/run", frame, summarize(frame), top=3)  # outputs/run/summary.html
"""
from __future__ import annotations

import html
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from .files import atomic_write
from .gallery import SUMMARY_PAGE, link_summary
from .summary import DIFFERENCE, label, prepared

log = logging.getLogger("cnnviz")

#: best-ranked groups whose mean curves are drawn, per curve
TOP = 5
#: curve files read per group at most (the first rows of the group in the manifest)
CURVE_ROWS = 200
#: groups in the box plots at most (in rank order)
BOX_GROUPS = 40
#: box plot panels side by side
BOX_ACROSS = 3
BOX_PNG = "summary_box.png"
CURVES_CSV = "summary_curves.csv"
CURVE_COLUMN = re.compile(r"^file_csv_(?P<key>.+_curve)$")


@dataclass(frozen=True)
class MeanCurve:
    """The mean of some maps' curves: ``series[name][i]`` is the mean of column ``name`` at ``x[i]``."""

    x_name: str
    x: np.ndarray
    series: dict[str, np.ndarray]
    #: curves in the mean
    n: int
    #: curve files listed but missing or unreadable, left out
    missing: int


def curve_keys(frame: pd.DataFrame) -> list[str]:
    """The curves the manifest lists files of (``file_csv_<key>`` columns, key ending in ``_curve``)."""
    return [m["key"] for m in map(CURVE_COLUMN.match, frame.columns) if m]


def _parse_numbers(text: str) -> Optional[tuple[list[str], np.ndarray]]:
    """A plain CSV of numbers (what ``files.csv_bytes`` writes) as (header, ``(rows, columns)`` floats);
    None for anything else (quotes, empty cells, ragged rows), which pandas then reads. About ten times
    faster than ``pd.read_csv`` on these small files (75 µs against 890 µs for a 21-point curve on the
    2-core dev machine), and a report may read a thousand of them."""
    lines = text.splitlines()
    if len(lines) < 2 or '"' in text:
        return None
    header = lines[0].split(",")
    try:
        values = np.array([line.split(",") for line in lines[1:] if line], dtype=float)
    except ValueError:
        return None
    return (header, values) if values.ndim == 2 and values.shape[1] == len(header) else None


def _read_curve(path: Path) -> Optional[tuple[list[str], np.ndarray]]:
    """A curve CSV as (column names, ``(points, columns)`` floats sorted by the first column); None when
    it is missing or unusable (a missing file is an expected gap, e.g. a deleted output; anything else
    is logged)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("summary.html: curve %s is unreadable (%s); left out of its mean", path, e)
        return None
    parsed = _parse_numbers(text)
    if parsed is None:
        try:
            table = pd.read_csv(io.StringIO(text))
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            log.warning("summary.html: curve %s is unreadable (%s); left out of its mean", path, e)
            return None
        parsed = [str(c) for c in table.columns], table.apply(pd.to_numeric, errors="coerce").to_numpy(float)
    names, values = parsed
    if len(names) < 2 or len(values) == 0:
        log.warning("summary.html: curve %s has no x column and series; left out of its mean", path)
        return None
    return names, values[np.argsort(values[:, 0], kind="stable")]


def mean_curve(folder: str | Path, files: Iterable[Any]) -> Optional[MeanCurve]:
    """The mean curve of the CSV files ``files`` (relative to ``folder``; a cell that is not a file
    name is a map without the curve and is skipped). The x values are those of the first curve read;
    a curve with other x values is interpolated onto them (linear, clamped at the ends); a curve
    with other columns than the first is left out (counted in ``missing``). None when no curve was read."""
    folder = Path(folder)
    names: Optional[list[str]] = None
    x_ref = np.empty(0)
    ys: list[np.ndarray] = []
    missing = 0
    for f in files:
        if not isinstance(f, str) or not f:
            continue
        curve = _read_curve(folder / f)
        if curve is not None and names is not None and curve[0] != names:
            log.warning("summary.html: curve %s has columns %s, unlike %s; left out of its mean", f, curve[0], names)
            curve = None
        if curve is None:
            missing += 1
            continue
        if names is None:
            names, x_ref = curve[0], curve[1][:, 0]
        x, values = curve[1][:, 0], curve[1][:, 1:]
        if len(x) != len(x_ref) or not np.allclose(x, x_ref, equal_nan=True):
            values = np.stack([np.interp(x_ref, x, v) for v in values.T], axis=1)
        ys.append(values)
    if names is None:
        return None
    stack = np.stack(ys)
    finite = np.isfinite(stack)
    count = finite.sum(axis=0)  # a point that is NaN in every curve stays NaN
    mean = np.where(count > 0, np.where(finite, stack, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    return MeanCurve(names[0], x_ref, {n: mean[:, i] for i, n in enumerate(names[1:])}, len(ys), missing)


def _group_positions(ok: pd.DataFrame, keys: Sequence[str]) -> dict[tuple, np.ndarray]:
    """Group key tuple -> positions of its rows in ``ok`` (one pass over the rows)."""
    if not keys:
        return {(): np.arange(len(ok))}
    codes: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(*(ok[k] for k in keys))):
        codes.setdefault(tuple(key), []).append(i)
    return {k: np.asarray(v) for k, v in codes.items()}


def _labels(table: pd.DataFrame) -> list[str]:
    several = "model" in table and table["model"].nunique() > 1
    return [label(r) + (f" [{r['model']}]" if several else "") for _, r in table.iterrows()]


def _metrics(table: pd.DataFrame) -> list[str]:
    return [c[:-5] for c in table.columns if c.endswith("_mean") and c != "metrics_ms_mean"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global backend, figures freed with the object

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclass(frozen=True)
class BoxStats:
    """Tukey's box of some values: quartiles, median, mean, whiskers at the most extreme values within
    1.5 IQR of the box, and the values beyond them (as ``matplotlib.cbook.boxplot_stats`` computes)."""

    q1: float
    median: float
    q3: float
    low: float
    high: float
    mean: float
    fliers: np.ndarray


def box_stats(values: np.ndarray) -> Optional[BoxStats]:
    """The box of the finite ``values``; None when there are none."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    reach = 1.5 * (q3 - q1)
    inside = v[(v >= q1 - reach) & (v <= q3 + reach)]
    return BoxStats(q1, median, q3, float(inside.min()), float(inside.max()), float(v.mean()),
                    v[(v < inside.min()) | (v > inside.max())])


def box_plot(ok: pd.DataFrame, table: pd.DataFrame, keys: Sequence[str], groups: int = BOX_GROUPS) -> bytes:
    """One panel per metric, one horizontal box per group (the first ``groups`` in rank order, best at
    the top) of the metric's values over the group's maps (PNG bytes). Each panel is drawn as a few
    collections (boxes, whiskers, medians, means, outliers), not seven artists per box as
    ``Axes.boxplot`` does: a figure of 40 groups × 11 metrics stays quick."""
    shown = table.head(groups)
    positions = _group_positions(ok, keys)
    metrics = _metrics(shown)
    labels = [_short(t) for t in _labels(shown)]
    from matplotlib.ticker import MaxNLocator

    across = min(BOX_ACROSS, len(metrics))  # rows of panels: a page-wide strip of 7 panels is too small to read
    down = -(-len(metrics) // across)
    fig = _figure(3.3 * across + 2.2, (0.28 * len(shown) + 1.0) * down)
    axes = fig.subplots(down, across, squeeze=False, sharey=True).ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    rows = [positions.get(tuple(row[k] for k in keys), np.array([], int)) for _, row in shown.iterrows()]
    half = 0.3
    for ax, metric in zip(axes, metrics):
        column = ok[metric].to_numpy(float) if metric in ok else np.full(len(ok), np.nan)
        boxes = [(y, b) for y, b in enumerate(box_stats(column[r]) for r in rows) if b is not None]
        if boxes:
            y = np.array([y for y, _ in boxes], float)
            get = lambda name: np.array([getattr(b, name) for _, b in boxes])  # noqa: E731
            q1, q3 = get("q1"), get("q3")
            ax.barh(y, q3 - q1, left=q1, height=2 * half, facecolor="none", edgecolor="black", lw=0.8)
            ax.hlines(np.r_[y, y], np.r_[get("low"), q3], np.r_[q1, get("high")], color="black", lw=0.8)
            ax.vlines(np.r_[get("low"), get("high")], np.r_[y, y] - half / 2, np.r_[y, y] + half / 2, color="black", lw=0.8)
            ax.vlines(get("median"), y - half, y + half, color="tab:orange", lw=1.5)
            ax.plot(get("mean"), y, "^", color="tab:green", markersize=4, ls="none")
            fx = np.concatenate([b.fliers for _, b in boxes])
            fy = np.concatenate([np.full(len(b.fliers), yy) for yy, b in boxes])
            ax.plot(fx, fy, "o", mfc="none", mec="black", markersize=3, ls="none")
        ax.set_title(metric.replace("_", " ") + (" (ranks)" if metric == table.attrs.get("ranked_by") else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(len(shown)), labels)  # shared: every row of panels gets the labels
    axes[0].set_ylim(len(shown) - 0.5, -0.5)  # best at the top
    return _png(fig)


@dataclass(frozen=True)
class GroupCurve:
    """The mean curve of one group: its rank, keys and label."""

    rank: int
    keys: dict[str, str]
    label: str
    curve: MeanCurve


def top_curves(folder: Path, ok: pd.DataFrame, table: pd.DataFrame, keys: Sequence[str], key: str, top: int = TOP,
               rows: int = CURVE_ROWS) -> tuple[list[GroupCurve], int]:
    """The mean ``key`` curves of the ``top`` best-ranked groups whose maps list that curve (at most
    ``rows`` files read per group), and how many of their listed files were missing or unreadable. A
    group whose listed files are all gone takes its place among the ``top`` without a curve, so the
    files read stay bounded by ``top · rows`` whatever was deleted."""
    column = f"file_csv_{key}"
    positions = _group_positions(ok, keys)
    files = ok[column].to_numpy(object)
    out: list[GroupCurve] = []
    examined = gone = 0
    for (_, row), text in zip(table.iterrows(), _labels(table)):
        if examined >= top:
            break
        listed = [f for f in files[positions.get(tuple(row[k] for k in keys), np.array([], int))] if isinstance(f, str) and f]
        if not listed:
            continue
        examined += 1
        curve = mean_curve(folder, listed[:rows])
        if curve is None:
            gone += min(len(listed), rows)
        else:
            out.append(GroupCurve(int(row["rank"]), {k: row[k] for k in keys}, text, curve))
    return out, gone


def curve_plot(key: str, curves: Sequence[GroupCurve], colours: Optional[dict[str, int]] = None) -> bytes:
    """One panel per series of the curve, one line per group (its mean curve), PNG bytes; ``colours``:
    group label -> colour index, so that a group has one colour in every plot of the page."""
    series = list(curves[0].curve.series)
    fig = _figure(3.8 * len(series) + 2.8, 3.3)  # the legend takes the last 2.8 in
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    colours = colours or {g.label: i for i, g in enumerate(curves)}
    for ax, name in zip(axes, series):
        for g in curves:
            if name in g.curve.series:
                ax.plot(g.curve.x, g.curve.series[name], marker="o", markersize=2.5, lw=1.4, color=palette(colours[g.label] % 10),
                        label=f"{g.rank}. {_short(g.label, 45)} (n={g.curve.n})")
        ax.set_xlabel(g.curve.x_name.replace("_", " "), fontsize=8)
        ax.set_ylabel(name.replace("_", " "), fontsize=8)
        ax.set_title(f"{key.replace('_', ' ')}: {name.replace('_', ' ')}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7, frameon=False)
    return _png(fig)


def curves_frame(curves: dict[str, list[GroupCurve]]) -> pd.DataFrame:
    """Every mean curve drawn, long form: curve, series, rank, group keys, n, missing, x, mean."""
    records = []
    for key, groups in curves.items():
        for g in groups:
            for name, values in g.curve.series.items():
                for x, y in zip(g.curve.x, values):
                    records.append({"curve": key, "series": name, "rank": g.rank, **g.keys, "n": g.curve.n,
                                    "missing": g.curve.missing, "x_name": g.curve.x_name, "x": x, "mean": y})
    return pd.DataFrame(records)


def _number(v: float) -> str:
    return "" if pd.isna(v) else f"{v:.4g}"


def _cell(table_row: pd.Series, metric: str) -> str:
    mean, std = table_row[f"{metric}_mean"], table_row[f"{metric}_std"]
    text = _number(mean) + (f" ± {_number(std)}" if pd.notna(std) and pd.notna(mean) else "")
    count = table_row.get(f"{metric}_n")
    if pd.notna(count) and int(count) != int(table_row["n"]):
        text += f" (n={int(count)})"
    return text


def ranking_html(table: pd.DataFrame, directions: dict[str, bool]) -> str:
    """The ranking table as an HTML ``<table>``: one row per group in rank order."""
    keys = [k for k in ("model", "method", "layer") if k in table]
    metrics = _metrics(table)
    head = ["rank", *keys, "n"]
    cells = [f"<th>{html.escape(h)}</th>" for h in head]
    for m in metrics:
        up = directions.get(m, True)
        cells.append(f'<th title="{"higher" if up else "lower"} is better">{html.escape(m.replace("_", " "))} {"↑" if up else "↓"}</th>')
    if "metrics_ms_mean" in table:
        cells.append("<th>metrics ms / map</th>")
    lines = ["<table class=ranking>", "<tr>" + "".join(cells) + "</tr>"]
    for _, row in table.iterrows():
        tds = [f"<td>{int(row['rank'])}</td>", *(f"<td class=name>{html.escape(str(row[k]))}</td>" for k in keys),
               f"<td>{int(row['n'])}</td>"]
        tds += [f"<td>{html.escape(_cell(row, m))}</td>" for m in metrics]
        if "metrics_ms_mean" in table:
            tds.append(f"<td>{_number(row['metrics_ms_mean'])}</td>")
        lines.append("<tr>" + "".join(tds) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


@dataclass(frozen=True)
class CurveSection:
    """One curve on the page: its picture (None when no group's files could be read), the groups drawn
    and the listed files missing or unreadable among those examined."""

    png: Optional[str]
    groups: list[GroupCurve]
    missing: int


def report_html(table: pd.DataFrame, directions: dict[str, bool], maps: int, failed: int, box: Optional[str],
                curves: dict[str, CurveSection], links: Sequence[tuple[str, str]], top: int) -> str:
    """The page: links, the ranking table, the box plots ``box`` and per curve key its picture."""
    e = html.escape
    primary = table.attrs.get("ranked_by") or ""
    nav = " · ".join(f'<a href="{e(href)}">{e(text)}</a>' for href, text in links)
    parts = [f"<p>{nav}</p>",
             f"<p>{maps} map(s) in {len(table)} group(s) of model × method × layer, ranked by <b>{e(primary.replace('_', ' '))}</b> "
             f"(rank 1 = best; ↑ higher is better, ↓ lower is better; ± is the standard deviation over the maps)"
             + (f"; {failed} failed row(s) left out" if failed else "") + ".</p>",
             "<h2>Ranking</h2>", ranking_html(table, directions)]
    if box:
        shown = min(len(table), BOX_GROUPS)
        parts += ["<h2>Metrics across maps</h2>",
                  f"<p>Each box: one group's values over its maps (median line, mean marker, quartiles, whiskers 1.5 IQR)"
                  + (f"; the first {shown} of {len(table)} groups" if shown < len(table) else "") + ".</p>",
                  f'<img src="{e(box)}" alt="box plots per metric">']
    if curves:
        parts += ["<h2>Curves</h2>",
                  f"<p>Per curve, the mean over each group's maps, for the {top} best-ranked group(s) that have it "
                  f"(at most {CURVE_ROWS} maps per group; n = curves in the mean)"
                  + (f'. The numbers: <a href="{CURVES_CSV}">{CURVES_CSV}</a>' if any(c.groups for c in curves.values()) else "")
                  + ".</p>"]
        figures = []
        for key, section in curves.items():
            note = (f"<p class=note>{section.missing} listed curve file(s) missing or unreadable, left out.</p>"
                    if section.missing else "")
            picture = f'<img src="{e(section.png)}" alt="{e(key)}">' if section.png else ""
            figures.append(f"<figure><figcaption>{e(key.replace('_', ' '))}</figcaption>{picture}{note}</figure>")
        parts.append("<div class=curves>" + "\n".join(figures) + "</div>")
    body = "\n".join(parts)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>cnnviz summary</title>
<style>body{{font-family:sans-serif;font-size:13px;margin:16px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}} td.name{{text-align:left}}
img{{max-width:100%;height:auto;display:block;margin:6px 0}} .note{{color:#a00}}
.curves{{display:flex;flex-wrap:wrap;gap:12px}} figure{{margin:0}} figcaption{{font-weight:bold}}</style></head>
<body><h1>cnnviz summary</h1>
{body}
</body></html>
"""


def write_report(folder: str | Path, frame: pd.DataFrame, table: pd.DataFrame, top: int = TOP) -> Optional[Path]:
    """``summary.html`` and its pictures in ``folder`` from a manifest frame and its ranked table
    (``summary.summarize``), then the link from ``index.html``; the page's path, None (nothing written)
    when the table is empty. The pictures are written before the page, so the page never names a
    file that is not there."""
    if table.empty:
        return None
    folder = Path(folder)
    ok, directions, keys = prepared(frame)
    atomic_write(folder / BOX_PNG, box_plot(ok, table, keys))
    found = {key: top_curves(folder, ok, table, keys, key, top) for key in curve_keys(ok)}
    colours: dict[str, int] = {}  # in order of first appearance: the top groups share the first colours
    for groups, _ in found.values():
        for g in groups:
            colours.setdefault(g.label, len(colours))
    curves: dict[str, CurveSection] = {}
    for key, (groups, gone) in found.items():
        png = f"summary_{_safe(key)}.png" if groups else None
        if png:
            atomic_write(folder / png, curve_plot(key, groups, colours))
        if groups or gone:
            curves[key] = CurveSection(png, groups, gone + sum(g.curve.missing for g in groups))
    links = [("index.html", "gallery")] if (folder / "index.html").is_file() else []
    links += [(f, f) for f in ("summary.csv", "summary.png") if (folder / f).is_file()]
    drawn = {k: c.groups for k, c in curves.items() if c.groups}
    if drawn:
        atomic_write(folder / CURVES_CSV, curves_frame(drawn).to_csv(index=False).encode())
        links.append((CURVES_CSV, CURVES_CSV))
    failed = int((frame["status"] == "error").sum()) if "status" in frame else 0
    page = folder / SUMMARY_PAGE
    atomic_write(page, report_html(table, {DIFFERENCE: True, **directions}, len(ok), failed, BOX_PNG, curves, links,
                                   top).encode("utf-8"))
    link_summary(folder)
    return page
