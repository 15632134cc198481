"""``experiment=select``: the technique, layer and hyperparameter a metric prefers, measured on the
user's own model and calibration images instead of the last-conv-layer habit (issue 25, section 3).

    python run.py experiment=select model=benchmark_cnn image=folder image.folder.path=calib/ \\
        'select.methods=[gradcam,layercam,smoothgrad]' select.layers=all select.metric=insertion
    python run.py --config-dir <run folder> --config-name best image=spider

**Candidates.** Every technique of ``select.methods`` × every layer of ``select.layers`` (techniques that
need a layer; ``all`` and ``type:<Class>`` expand as in any run, narrowed to the layers a technique can
use) × every value of the technique's main hyperparameter (``Method.main_hyperparameter``, e.g.
SmoothGrad's ``noise_level``; ``select.values.<method>`` replaces the values or names another field).
The ordinary runner computes them (``build_plan`` + ``execute``): one sub-run per technique and value,
in ``candidates/<method>[_<field>-<value>]/`` with its own manifest, files, gallery, resume and archived
configuration (``.hydra/config.yaml``, which ``python -m cnnviz.verify`` reads), so a CAM's layers share
one forward/backward pass per image. A sub-run that cannot start (say, a
transformer technique on a CNN) is recorded as an error row (``job_error.json``) and the others still
run; when no candidate can start, the configuration error of the first one is the run's (exit 2).

**Ranking.** A candidate's maps are averaged per image first (an image explained for several targets
counts once), then over its n images: the mean and a two-sided Student t interval

    mean ± t_{(1 + level) / 2, n - 1} · s / √n        (s: standard deviation over images, ddof 1)

at ``select.level`` (95 %); n = 1 gives no interval. Candidates are ranked by the mean, best first in
the metric's direction (``Metric.higher_is_better``); equal means keep the sweep order (the order of
``select.methods``, then the model's layer order, then the listed values), so the ranking is
deterministic. ``overlaps_best`` marks candidates whose interval reaches the best one's: these images do
not show them worse. Candidates without a value (failed, or a metric that does not apply to them) are
listed last, unranked.

**Output** in the run folder: ``select.csv`` (one row per candidate), ``best.yaml`` (a primary config:
``conf/config.yaml`` with the model as the selection used it, the chosen technique with its chosen
value and layer, and the run-level settings), ``select.html`` with ``select.png`` (the ranking, mean ±
interval per candidate) and the maps of the best ``select.top`` candidates on ``select.examples``
images (relative links into ``candidates/``), and ``manifest.csv`` / ``index.html`` merged over the
candidates (``job`` names each row's candidate folder). The exit status is that of any run: 3 when an
item or a candidate failed (or no candidate could be ranked), unless failures are allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import html
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from ..core.constraints import check_values
from ..core.errors import ConfigError, unknown
from ..output.files import atomic_write
from .schema import SelectConfig, check_keys

log = logging.getLogger("cnnviz")

#: insertion AUC - deletion AUC of each map (``cnnviz.output.summary``): high when a map finds what the class needs
DIFFERENCE = "insertion_minus_deletion"
#: the columns that identify a candidate, in select.csv's order
KEY = ["method", "layer", "param", "value"]
#: top-level settings best.yaml carries from the selection (the image, the metrics and the run's own
#: bookkeeping — resume, shards, failures — are the new run's)
CARRIED = ("target", "device", "seed", "fast_copy", "reuse_memory", "batch_size", "precision", "render")
#: the ranking plot shows at most this many candidates (select.csv lists all)
PLOT_MAX = 40


# --- the metric, the values ------------------------------------------------------------------------------


def resolve_metric(name: str) -> tuple[str, bool, tuple[str, ...]]:
    """``select.metric`` as ``(column, higher_is_better, metrics that fill it)``: a metric with one
    column (``insertion`` -> ``insertion_auc``), a metric column (``road_lerf``), or
    ``insertion_minus_deletion``. A metric with several columns, or an unknown name, is a ConfigError
    listing the choices."""
    from ..metrics import get_metric, list_metrics

    name = str(name)
    if name == DIFFERENCE:
        return DIFFERENCE, True, ("insertion", "deletion")
    metrics = {n: get_metric(n) for n in list_metrics()}
    if name in metrics:
        cls = metrics[name]
        if len(cls.columns) == 1:
            return cls.columns[0], bool(cls.higher_is_better.get(cls.columns[0], True)), (name,)
        shown = ", ".join(f"{c} ({'higher' if cls.higher_is_better.get(c, True) else 'lower'} is better)"
                          for c in cls.columns)
        raise ConfigError(f"select.metric={name}: {name} fills several columns: {shown}; name the one to rank by "
                          f"(select.metric={cls.columns[0]})")
    for metric, cls in metrics.items():
        if name in cls.columns:
            return name, bool(cls.higher_is_better.get(name, True)), (metric,)
    columns = [c for cls in metrics.values() for c in cls.columns]
    raise unknown("metric or metric column", "select.metric", name, [*metrics, *columns, DIFFERENCE])


def sweep_values(name: str, cls: type, override: Any) -> Optional[tuple[str, tuple]]:
    """The hyperparameter of technique ``name`` (class ``cls``) to sweep and its values, or None (its
    configured value only). ``override`` is ``select.values.<name>``: None (the technique's
    ``main_hyperparameter``), a list of values of it, ``{field: [values]}`` for another field, or ``[]``
    (no sweep). Every value is checked as the technique's own configuration would be."""
    from .plan import check_params, plain

    key = f"select.values.{name}"
    main = getattr(cls, "main_hyperparameter", None)
    if override is None:
        return None if main is None else (main[0], tuple(main[1]))
    override = plain(override)
    if isinstance(override, dict):
        if len(override) != 1:
            raise ConfigError(f"{key}: one hyperparameter per technique, got {', '.join(map(str, override)) or 'none'}; "
                              f"e.g. {key}={{{next(iter(override), 'field')}: [a, b]}}")
        field, values = next(iter(override.items()))
        field = str(field)
    elif isinstance(override, (list, tuple)):
        if not override:
            return None
        if main is None:
            fields = [f.name for f in dataclasses.fields(cls)]
            raise ConfigError(f"{key}: {name} declares no main hyperparameter; name the one to sweep: "
                              f"{key}={{<field>: [a, b]}} (fields: {', '.join(fields) or 'none'})")
        field, values = main[0], override
    else:
        raise ConfigError(f"{key}: a list of values of {name}'s main hyperparameter ([a, b]) or {{<field>: [a, b]}}, "
                          f"got {override!r}")
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{key}.{field}: a list of values ([a, b]), got {values!r}")
    if not values:
        return None
    for value in values:
        check_params(cls, {field: value}, key, f"hyperparameter of {name}")
    return field, tuple(dict.fromkeys(values))


# --- the ranking -------------------------------------------------------------------------------------------


def _blank(value: Any) -> Any:
    """A key cell as the ranking compares it: missing (None, NaN) is ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def t_quantile(p: float, df: int) -> float:
    """Student t's ``p`` quantile with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def rank_candidates(frame: pd.DataFrame, column: str, higher_is_better: bool, level: float = 0.95,
                    order: Optional[Sequence[tuple]] = None) -> pd.DataFrame:
    """One row per candidate (``method, layer, param, value``) of a manifest-like ``frame``: ``n``
    images, ``mean`` and the Student t interval ``ci_low, ci_high`` of ``column`` over the images
    (each image's maps averaged first), ``rank`` (1 = best in the metric's direction; equal means in
    ``order``, by default the candidates' first appearance in ``frame``), then ``sd``, ``failed`` rows,
    ``overlaps_best``, ``status`` (ok | error | no values) and ``error``. Only ``ok`` rows count.
    Unranked candidates come last."""
    f = frame.copy()
    for k in KEY:
        f[k] = [_blank(v) for v in f[k]] if k in f else ""
    ok = (f["status"] == "ok") if "status" in f else pd.Series(True, index=f.index)
    f["_score"] = pd.to_numeric(f[column], errors="coerce").where(ok) if column in f else np.nan
    f["_key"] = list(zip(*(f[k] for k in KEY)))
    keys = list(dict.fromkeys(f["_key"]))
    position = {k: i for i, k in enumerate(dict.fromkeys([tuple(_blank(v) for v in o) for o in (order or [])] + keys))}
    rows = []
    for key in keys:
        part = f[f["_key"] == key]
        per_image = part.groupby("image", sort=True)["_score"].mean().dropna() if "image" in part else part["_score"].dropna()
        values = per_image.to_numpy(dtype=np.float64)
        n = len(values)
        mean = float(values.mean()) if n else math.nan
        sd = float(values.std(ddof=1)) if n > 1 else math.nan
        half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
        part_ok = ok[part.index]
        errors = [str(e) for e in part.get("error", pd.Series(dtype=object))[~part_ok] if isinstance(e, str) and e]
        status = "ok" if n else ("error" if not part_ok.any() and errors else "no values")
        rows.append({**dict(zip(KEY, key)), "n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half,
                     "sd": sd, "failed": int((~part_ok).sum()), "status": status, "error": errors[0] if errors else "",
                     "_position": position[key]})
    table = pd.DataFrame(rows, columns=[*KEY, "n", "mean", "ci_low", "ci_high", "sd", "failed", "status", "error",
                                        "_position"])
    ranked = table[table["n"] > 0].copy()
    ranked["_sort"] = -ranked["mean"] if higher_is_better else ranked["mean"]
    ranked = ranked.sort_values(["_sort", "_position"], kind="stable").drop(columns="_sort")
    ranked["rank"] = pd.array(range(1, len(ranked) + 1), dtype="Int64")
    rest = table[table["n"] == 0].sort_values("_position", kind="stable").copy()
    rest["rank"] = pd.array([pd.NA] * len(rest), dtype="Int64")
    out = pd.concat([ranked, rest], ignore_index=True) if len(rest) else ranked.reset_index(drop=True)
    out["rank"] = out["rank"].astype("Int64")
    if len(ranked):
        best = ranked.iloc[0]
        reach = out["ci_high"].fillna(out["mean"]) if higher_is_better else out["ci_low"].fillna(out["mean"])
        bound = best["ci_low"] if higher_is_better else best["ci_high"]
        bound = best["mean"] if math.isnan(bound) else bound
        out["overlaps_best"] = (reach >= bound) if higher_is_better else (reach <= bound)
        out.loc[out["n"] == 0, "overlaps_best"] = False
    else:
        out["overlaps_best"] = False
    columns = [*KEY, "n", "mean", "ci_low", "ci_high", "rank", "sd", "failed", "overlaps_best", "status", "error"]
    return out[columns]


# --- the sweep ---------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One sub-run: a technique at one value of one hyperparameter (or at its configured values), all
    its layers."""

    method: str
    param: str
    value: Any
    #: relative to the run folder: candidates/<name>
    folder: str
    cfg: DictConfig
    plan: Any = None
    #: why the sub-run could not start (then no plan)
    error: Optional[str] = None
    load_s: float = 0.0

    def keys(self) -> list[tuple]:
        """The ranking keys of its candidates, in sweep order."""
        layers = (self.plan.layers.get(self.method) if self.plan is not None else None) or [""]
        return [(self.method, layer, self.param, self.value) for layer in layers]


@dataclass
class Selection:
    """A checked selection, ready to run: its candidates' plans are built."""

    cfg: DictConfig
    out_dir: Path
    column: str
    higher_is_better: bool
    level: float
    top: int
    examples: int
    candidates: list[Candidate]
    #: the Hydra group choices of the run (``model`` -> ``benchmark_cnn``); empty outside Hydra
    choices: dict


def group_option(group: str, name: str) -> dict:
    """The options ``conf/<group>/<name>.yaml`` holds (what ``<group>=<name>`` composes); {} when
    there is no such file (the class's defaults)."""
    from .cli import CONF_DIR

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}


def candidate_folder(method: str, param: str, value: Any, taken: set[str]) -> str:
    from ..data.images import safe_name

    base = safe_name(method if not param else f"{method}_{param}-{value}")
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}-{k}"
    taken.add(name)
    return f"candidates/{name}"


def prepare_selection(cfg: DictConfig, out_dir: Path, hydra_cfg: Optional[DictConfig] = None) -> Selection:
    """Check ``cfg.select`` and build every candidate's plan (the model loads once); ConfigErrors name
    the ``select.*`` key. A candidate whose plan cannot be built is kept with its error, unless every
    candidate fails: then the first one's error is the run's."""
    from ..methods import get_method
    from .plan import build_plan, plain

    check_keys(cfg.select, SelectConfig, "select")
    options = plain(cfg.select)
    check_values(SelectConfig, {k: options[k] for k in ("level", "top", "examples")}, "select")
    column, higher, needed = resolve_metric(options["metric"])
    methods = options["methods"]
    if methods is None:
        methods = list(cfg.method or {})
    elif isinstance(methods, str):
        methods = [methods]
    methods = list(dict.fromkeys(str(m) for m in methods))
    if not methods:
        raise ConfigError("select.methods is empty and so is `method`: name the techniques to compare, "
                          "e.g. 'select.methods=[gradcam,layercam,smoothgrad]'")
    classes = {}
    for m in methods:
        try:
            classes[m] = get_method(m)
        except ConfigError as e:
            raise ConfigError(f"select.methods: {e}") from None
    values = options.get("values") or {}
    if not isinstance(values, dict):
        raise ConfigError(f"select.values: a mapping from technique to values, e.g. "
                          f"'select.values={{smoothgrad: [0.1, 0.2]}}', got {values!r}")
    for m in values:
        if m not in classes:
            raise ConfigError(f"select.values.{m}: {m} is not among the techniques compared "
                              f"({', '.join(methods)}); add it to select.methods or remove select.values.{m}")
    sweeps = {m: sweep_values(m, classes[m], values.get(m)) for m in methods}
    metrics = dict(plain(cfg.get("metrics")) or {})
    for name in needed:
        if name not in metrics:
            metrics[name] = group_option("metrics", name)
            log.info("select.metric=%s: metric %s added with the options of conf/metrics/%s.yaml", options["metric"],
                     name, name)
    layers = options["layers"] if options["layers"] is not None else plain(cfg.layer)
    candidates, taken = [], set()
    for m in methods:
        params = plain(cfg.method[m]) if m in (cfg.method or {}) else group_option("method", m)
        params = dict(params or {})
        sweep = sweeps[m]
        for value in (sweep[1] if sweep else [""]):
            chosen = {**params, sweep[0]: value} if sweep else params
            sub = copy.deepcopy(cfg)
            with read_write(sub), open_dict(sub):
                sub.method = {m: chosen}
                sub.metrics = copy.deepcopy(metrics)
                sub.layer = layers
                sub.select = None
            candidates.append(Candidate(m, sweep[0] if sweep else "", value,
                                        candidate_folder(m, sweep[0] if sweep else "", value, taken), sub))
    for c in candidates:
        start = time.perf_counter()
        try:
            c.plan = build_plan(c.cfg)
        except ConfigError as e:
            c.error = str(e)
            log.warning("select: candidate %s cannot run: %s", c.folder, e)
        c.load_s = time.perf_counter() - start
    if all(c.error for c in candidates):
        first = candidates[0]
        many = f"no candidate can run ({len(candidates)} tried); {first.folder}: " if len(candidates) > 1 else ""
        raise ConfigError(f"{many}{first.error}")
    choices = {}
    if hydra_cfg is not None:
        choices = {str(k): v for k, v in plain(hydra_cfg.runtime.choices).items()}
    level, top, examples = float(options["level"]), int(options["top"]), int(options["examples"])
    return Selection(cfg, Path(out_dir), column, higher, level, top, examples, candidates, choices)


def run_selection(sel: Selection) -> pd.DataFrame:
    """Compute every candidate, rank them, write select.csv, best.yaml, select.html / select.png and
    the merged manifest; print the top of the ranking. Returns the merged manifest frame, with one more
    ``error`` row (not written) when no candidate could be ranked, so that the run's exit status says so."""
    from . import sweep
    from .archive import record_config
    from .cli import open_manifest
    from .runner import execute

    out = sel.out_dir
    frames = []
    for c in sel.candidates:
        folder = out / c.folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / sweep.JOB_ERROR).unlink(missing_ok=True)
        frame = None
        if c.error is None:
            try:
                manifest = open_manifest(folder / "manifest.csv", bool(sel.cfg.resume))
                # the candidate's own configuration, as an ordinary run folder archives it (verify reads it)
                record_config(folder, c.cfg, [], None)
                frame = execute(c.plan, folder, c.load_s, manifest)
            except Exception as e:  # this candidate's failure, recorded; the others still run (a logged choice)
                c.error = f"{'configuration error: ' if isinstance(e, ConfigError) else type(e).__name__ + ': '}{e}"
                log.exception("select: candidate %s failed", c.folder)
        if c.error is not None:
            sweep.record_job_error(folder, c.error)
            frame = pd.DataFrame([{"method": c.method, "layer": "", "status": "error", "error": c.error}])
        frame = frame.copy()
        frame["param"], frame["value"], frame["folder"] = c.param, [c.value] * len(frame), c.folder
        frames.append(frame)
    merged = sweep.merge(out)
    # a candidate that failed to start over an earlier run's manifest: merge() reads the manifest and
    # not job_error.json, so its failure is added here (for the exit status)
    stale = [{"job": c.folder, "method": c.method, "status": "error", "error": c.error} for c in sel.candidates
             if c.error is not None and (out / c.folder / "manifest.csv").is_file()]
    if stale:
        merged = pd.concat([merged, pd.DataFrame(stale)], ignore_index=True)
    rows = pd.concat(frames, ignore_index=True)
    if DIFFERENCE == sel.column and {"insertion_auc", "deletion_auc"} <= set(rows):
        rows[DIFFERENCE] = pd.to_numeric(rows["insertion_auc"], errors="coerce") - pd.to_numeric(rows["deletion_auc"],
                                                                                                  errors="coerce")
    order = [k for c in sel.candidates for k in c.keys()]
    table = rank_candidates(rows, sel.column, sel.higher_is_better, sel.level, order)
    folders = {(c.method, c.param, str(_blank(c.value))): c.folder for c in sel.candidates}
    table["folder"] = [folders[(r.method, r.param, str(_blank(r.value)))] for r in table.itertuples()]
    atomic_write(out / "select.csv", table.to_csv(index=False).encode())
    ranked = table.dropna(subset=["rank"])
    if ranked.empty:
        (out / "best.yaml").unlink(missing_ok=True)
        why = (f"no candidate has a value of {sel.column} (select.metric): every candidate failed, or the metric does "
               f"not apply to the techniques compared; see {out / 'select.csv'}")
        log.error("select: %s", why)
        print(f"cnnviz: select: {why}")
        return pd.concat([merged, pd.DataFrame([{"job": "select", "status": "error", "error": why}])], ignore_index=True)
    best = ranked.iloc[0]
    c = next(c for c in sel.candidates if c.folder == best["folder"])
    params = plain_params(c.cfg.method[c.method])
    params.pop("layer", None)  # a per-technique layer (method.<name>.layer) would outrank the chosen one
    layer = best["layer"] or None
    atomic_write(out / "best.yaml", best_yaml(sel.cfg, sel.choices, c.method, params, layer,
                                              best_header(sel, best, table)).encode())
    atomic_write(out / "select.png", ranking_plot(table, sel.column, sel.higher_is_better, sel.level))
    atomic_write(out / "select.html", report_html(sel, table, rows).encode())
    print(printable(table, sel))
    print(f"cnnviz: best: {label(best)}: {sel.column} {best['mean']:.4g}{interval(best, sel.level)} over "
          f"{int(best['n'])} image(s); report: {out / 'select.html'}")
    print(f"cnnviz: best.yaml: {out / 'best.yaml'} (python run.py --config-dir {out} --config-name best image=...)")
    return merged


def plain_params(node: Any) -> dict:
    return dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node or {})


# --- best.yaml ---------------------------------------------------------------------------------------------


def best_yaml(cfg: DictConfig, choices: dict, method: str, params: dict, layer: Optional[str],
              header: Sequence[str] = ()) -> str:
    """``best.yaml``: a primary config for ``python run.py --config-dir <run folder> --config-name best``.

    Its defaults list composes ``conf/config.yaml`` (found on the search path beside the run folder,
    which ``--config-dir`` adds to it), then replaces the ``method`` group by the chosen technique (a
    group's dict would otherwise merge with config.yaml's default technique) and the ``model`` group by
    the one the selection used; its own keys (``_self_``, last) hold the whole model config as the
    selection ran it (command-line overrides such as ``model.weights`` included), the technique's
    options with the chosen value, the layer and the run-level settings (``CARRIED``). The image is the
    new run's: ``image=...`` on the command line."""
    import yaml

    from .plan import plain

    defaults: list[Any] = ["config"]
    if choices.get("model"):
        defaults.append({"override model": str(choices["model"])})
    defaults += [{"override method": method}, "_self_"]
    doc = {"defaults": defaults, "model": plain(cfg.model), "method": {method: dict(params)}, "layer": layer}
    doc.update({k: plain(cfg.get(k)) for k in CARRIED if k in cfg})
    lines = [f"# {line}" for line in header]
    return "\n".join(lines) + ("\n" if lines else "") + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def best_header(sel: Selection, best: pd.Series, table: pd.DataFrame) -> list[str]:
    direction = "higher" if sel.higher_is_better else "lower"
    ranked = int(table["rank"].notna().sum())
    return [f"chosen by experiment=select (cnnviz.app.select) among {ranked} candidate(s): {label(best)}",
            f"{sel.column} ({direction} is better): mean {best['mean']:.4g}{interval(best, sel.level)} over "
            f"{int(best['n'])} calibration image(s)",
            f"run it: python run.py --config-dir {sel.out_dir} --config-name best image=<preset> "
            "(or image=folder image.folder.path=...)"]


# --- report --------------------------------------------------------------------------------------------------


def label(row: Any) -> str:
    text = str(row["method"]) + (f" @ {row['layer']}" if _blank(row["layer"]) != "" else "")
    return text + (f" ({row['param']}={row['value']})" if _blank(row["param"]) != "" else "")


def interval(row: Any, level: float) -> str:
    if pd.isna(row["ci_low"]):
        return ""
    return f", {level:.0%} CI [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"


def printable(table: pd.DataFrame, sel: Selection, rows: int = 10) -> str:
    """The first ``rows`` of the ranking as text."""
    direction = "higher" if sel.higher_is_better else "lower"
    shown = table.head(rows)
    lines = [f"cnnviz: select: {len(table)} candidate(s), ranked by {sel.column} ({direction} is better), mean over "
             f"images with a {sel.level:.0%} Student t interval"]
    width = max([len(label(r)) for _, r in shown.iterrows()] + [9])
    lines.append(f"  rank  {'candidate':<{width}}  {'n':>3}  {'mean':>9}  interval")
    for _, r in shown.iterrows():
        rank = "-" if pd.isna(r["rank"]) else str(int(r["rank"]))
        mean = "" if pd.isna(r["mean"]) else f"{r['mean']:.4g}"
        ci = f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]" if pd.notna(r["ci_low"]) else ("" if r["status"] == "ok" else r["status"])
        lines.append(f"  {rank:>4}  {label(r):<{width}}  {int(r['n']):>3}  {mean:>9}  {ci}")
    if len(table) > rows:
        lines.append(f"  ... {len(table) - rows} more in {sel.out_dir / 'select.csv'}")
    return "\n".join(lines)


def ranking_plot(table: pd.DataFrame, column: str, higher_is_better: bool, level: float) -> bytes:
    """Mean ± interval per ranked candidate, best at the top (PNG bytes); at most ``PLOT_MAX``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = table.dropna(subset=["rank"]).head(PLOT_MAX)
    y = np.arange(len(shown))
    means = shown["mean"].to_numpy(dtype=float)
    low = np.nan_to_num(means - shown["ci_low"].to_numpy(dtype=float))
    high = np.nan_to_num(shown["ci_high"].to_numpy(dtype=float) - means)
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(shown) + 1.3))
    colours = ["tab:orange" if i == 0 else ("tab:blue" if ok else "tab:gray")
               for i, ok in enumerate(shown["overlaps_best"].astype(bool))]
    ax.errorbar(means, y, xerr=[low, high], fmt="none", ecolor="0.4", elinewidth=1, capsize=2)
    ax.scatter(means, y, c=colours, s=18, zorder=3)
    ax.set_yticks(y, [label(r) for _, r in shown.iterrows()], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{column} ({'higher' if higher_is_better else 'lower'} is better), mean and {level:.0%} interval "
                  "over images", fontsize=8)
    more = len(table.dropna(subset=["rank"])) - len(shown)
    ax.set_title(f"best first{f' (first {len(shown)}; {more} more in select.csv)' if more else ''}; "
                 "blue: interval reaches the best's", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", lw=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _example_rows(ok_rows: pd.DataFrame, cand: pd.Series, images: list[str]) -> dict[str, dict]:
    """The first ok manifest row of each of ``images`` for candidate ``cand`` (its folder and layer)."""
    layers = ok_rows["layer"] if "layer" in ok_rows else pd.Series("", index=ok_rows.index)
    same_layer = np.array([_blank(v) == _blank(cand["layer"]) for v in layers], dtype=bool)
    part = ok_rows[(ok_rows["folder"] == cand["folder"]).to_numpy() & same_layer]
    found: dict[str, dict] = {}
    for r in part.to_dict("records"):
        if str(r["image"]) in images:
            found.setdefault(str(r["image"]), r)
    return found


def report_html(sel: Selection, table: pd.DataFrame, rows: pd.DataFrame) -> str:
    """select.html: the ranking plot, the maps of the best ``sel.top`` candidates on ``sel.examples``
    images (relative links into their candidate folders), and the whole ranking as a table."""
    from ..output.gallery import cell_file

    e = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    ranked = table.dropna(subset=["rank"])
    top = ranked.head(sel.top)
    ok_rows = rows[rows["status"] == "ok"]
    images = sorted({str(i) for i in ok_rows.get("image", pd.Series(dtype=object)).dropna()})[:sel.examples]
    direction = "higher" if sel.higher_is_better else "lower"
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>cnnviz: which technique, which layer?</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:left}"
             "img.map{width:144px;image-rendering:pixelated}.best{background:#fff3e0}</style></head><body>",
             "<h1>Which technique, which layer?</h1>",
             f"<p>{len(table)} candidate(s) ranked by <b>{e(sel.column)}</b> ({direction} is better): mean over the "
             f"calibration images with a {sel.level:.0%} Student t interval.</p>"]
    if len(top):
        best = top.iloc[0]
        parts.append(f"<p>Best: <b>{e(label(best))}</b>, {e(sel.column)} {best['mean']:.4g}"
                     f"{e(interval(best, sel.level))}. Run it on other images: <code>python run.py --config-dir "
                     f"{e(sel.out_dir)} --config-name best image=...</code> (<a href='best.yaml'>best.yaml</a>).</p>")
    parts.append("<p><img src=\"select.png\" alt=\"ranking\" style=\"max-width:100%\"></p>")
    if len(top) and images:
        parts.append(f"<h2>The best {len(top)}: maps on {len(images)} image(s)</h2><table><tr><th></th>"
                     + "".join(f"<th>{e(i)}</th>" for i in images) + "</tr>")
        first = _example_rows(ok_rows, top.iloc[0], images)
        cells = []
        for image in images:
            r = first.get(image)
            src = f"{top.iloc[0]['folder']}/{r['file_input']}" if r is not None and isinstance(r.get("file_input"), str) else None
            cells.append(f"<td><img class=map src=\"{e(src)}\" alt=\"input\"></td>" if src else "<td></td>")
        parts.append("<tr><th>input</th>" + "".join(cells) + "</tr>")
        for k, (_, cand) in enumerate(top.iterrows()):
            found = _example_rows(ok_rows, cand, images)
            cells = []
            for image in images:
                r = found.get(image)
                picture = cell_file(r) if r is not None else None
                score = pd.to_numeric(pd.Series([r.get(sel.column) if r is not None else None]), errors="coerce")[0]
                caption = f"<br>{score:.3g}" if pd.notna(score) else ""
                cells.append(f"<td><img class=map src=\"{e(cand['folder'] + '/' + picture)}\" alt=\"map\">{caption}</td>"
                             if picture else "<td>no picture</td>")
            parts.append(f"<tr{' class=best' if k == 0 else ''}><th>{int(cand['rank'])}. {e(label(cand))}</th>"
                         + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Ranking</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in
                 ["rank", "method", "layer", "param", "value", "n", "mean", "interval", "status"]) + "</tr>")
    for _, r in table.iterrows():
        rank = "" if pd.isna(r["rank"]) else int(r["rank"])
        ci = f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]" if pd.notna(r["ci_low"]) else ""
        mean = f"{r['mean']:.4g}" if pd.notna(r["mean"]) else ""
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        parts.append(f"<tr{' class=best' if rank == 1 else ''}>" + "".join(
            f"<td>{e(v)}</td>" for v in [rank, r["method"], r["layer"], r["param"], r["value"], int(r["n"]), mean, ci,
                                         status]) + "</tr>")
    parts.append("</table><p>Every map: <a href='index.html'>index.html</a>; every row: "
                 "<a href='manifest.csv'>manifest.csv</a>; the ranking: <a href='select.csv'>select.csv</a>.</p>"
                 "</body></html>")
    return "\n".join(parts)
