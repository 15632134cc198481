"""Recompute an archived run (or every job of a sweep) and compare it with what is on disk.

    python -m cnnviz.verify RUN_OR_SWEEP_DIR [--atol 0]

Each job is rebuilt from its archived ``.hydra/config.yaml``, read as data (``cnnviz.app.trust``: its
``model._target_`` must name a registered model loader and no other ``_target_`` may appear), and
recomputed into a temporary folder by the runner's own code path. Every file the manifest lists for
an ``ok`` row is checked once (a file listed by several rows, such as the input picture, too):

1. its bytes against the sha256 the manifest records for it, always, whatever ``--atol``: a file
   changed after the run is ``different``;
2. then against the recompute: a raw ``.npy`` array within ``--atol`` (its largest absolute
   difference is reported), every other file by sha256. With ``--atol``, a file drawn from a row's
   arrays (its PNGs, GIFs, CSVs, plots; not the input picture, which no array makes) that differs
   while the row's arrays differ within ``atol`` is ``identical`` ("re-rendered from arrays within
   atol"): its pixels follow the arrays, and step 1 has already shown it is the archived rendering.

On the CPU a recompute is bit-identical; ``--atol`` serves runs made on a GPU. A damaged manifest
is reported (its intact rows are still checked), and so are manifest rows the archived configuration
does not produce (a manifest from another configuration, or an edited ``config.yaml``).

Exit status: 0 every file identical; 1 a file different or missing, a damaged manifest, or rows the
configuration does not produce; 2 nothing to verify — no archived run, a configuration refused or
failing its checks, no manifest, not a manifest, or no ``ok`` row (when no job had a difference).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from .schema import register_configs
from ..core.errors import ConfigError
from ..output.files import file_sha256
from ..output.manifest import KEY, ManifestError, _key, read_manifest

#: file column kinds no array of the row is drawn from: compared byte for byte even with --atol
NOT_RENDERED = ("input",)
CHANGED = "changed after the run: its sha256 is not the manifest's recorded sha256"


@dataclass
class JobReport:
    """What verify found in one job folder."""

    #: (path, verdict, detail) per file, each file once; verdict: identical | different | missing
    files: list[tuple[str, str, str]] = field(default_factory=list)
    #: differences that are not one file's: rows the configuration does not produce
    problems: list[str] = field(default_factory=list)
    #: why nothing in the job could be verified, or None
    unverified: Optional[str] = None

    @property
    def bad(self) -> int:
        return sum(v != "identical" for _, v, _ in self.files)


def job_dirs(folder: Path) -> list[Path]:
    if (folder / ".hydra" / "config.yaml").is_file():
        candidates = sorted(p.parent.parent for p in (folder / "candidates").glob("*/.hydra/config.yaml"))
        return candidates or [folder]  # experiment=select: its candidates are the runs that wrote files
    return sorted(p.parent.parent for p in folder.rglob(".hydra/config.yaml"))


def read_rows(job: Path, report: JobReport) -> list[dict[str, Any]]:
    """The manifest's ``ok`` rows; a damaged manifest is noted in ``report`` (its intact rows are
    returned), a missing or unusable one sets ``report.unverified``."""
    path = job / "manifest.csv"
    if not path.exists():
        report.unverified = f"{path}: no manifest (the run wrote no row)"
        return []
    if not path.is_file():
        report.unverified = f"{path}: not a file"
        return []
    if path.stat().st_size == 0:
        report.unverified = f"{path}: the manifest is empty"
        return []
    try:
        frame, damage = read_manifest(path)
    except ManifestError as e:
        report.unverified = str(e).split(";")[0]
        return []
    if damage:  # the manifest is a file of the archive too
        report.files.append((str(path), "different", damage))
    rows = [r for r in frame.to_dict("records") if r.get("status") == "ok"]
    if not rows and not damage:
        report.unverified = f"{path}: no ok row ({len(frame)} row(s) in all)"
    return rows


def _files(row: dict[str, Any]) -> list[tuple[str, str]]:
    """``(kind, file name)`` of every file a row lists."""
    return [(c[5:], row[c]) for c in row if c.startswith("file_") and isinstance(row[c], str)]


def _max_abs_diff(a: Path, b: Path) -> float:
    """The largest absolute difference of two saved arrays; inf for other shapes, or where only one
    of them is NaN (a NaN difference must never pass as within a tolerance)."""
    x, y = np.load(a, allow_pickle=False).astype(np.float64), np.load(b, allow_pickle=False).astype(np.float64)
    if x.shape != y.shape:
        return float("inf")
    both = np.isnan(x) & np.isnan(y)
    diff = np.where(both, 0.0, np.abs(x - y))
    return float(np.max(np.nan_to_num(diff, nan=np.inf), initial=0.0))


def compare_job(job: Path, atol: float) -> JobReport:
    """Check every file of every ``ok`` row of one job folder (see the module docstring)."""
    from .runner import run
    from .trust import read_archived_config

    report = JobReport()
    try:
        cfg = read_archived_config(job)
    except ConfigError as e:
        report.unverified = f"configuration refused: {e}"
        return report
    rows = read_rows(job, report)
    if not rows:
        return report
    cfg.resume = False
    with tempfile.TemporaryDirectory(prefix="cnnviz-verify-") as tmp:
        try:
            fresh = run(cfg, Path(tmp))
        except ConfigError as e:
            report.unverified = f"{job / '.hydra' / 'config.yaml'}: configuration error: {e}"
            return report
        by_key = {_key(r): r for r in fresh.to_dict("records") if r.get("status") == "ok"}
        unmatched = [r for r in rows if _key(r) not in by_key]
        if unmatched:
            report.problems.append(
                f"{job / 'manifest.csv'}: {len(unmatched)} of {len(rows)} ok row(s) are not produced by its archived "
                f"configuration (.hydra/config.yaml): the manifest is from another configuration, or the configuration "
                f"was edited; the first: {', '.join(f'{k}={unmatched[0][k]}' for k in KEY if isinstance(unmatched[0].get(k), str))}")
        listed_by: dict[str, int] = {}
        for row in rows:
            for _, name in _files(row):
                listed_by[name] = listed_by.get(name, 0) + 1
        seen: set[str] = set()
        for row in rows:
            new = by_key.get(_key(row))
            arrays = _arrays(job, Path(tmp), row, new)
            for kind, name in _files(row):
                if name in seen:
                    continue
                seen.add(name)
                shared = listed_by[name] > 1 or kind in NOT_RENDERED
                report.files.append((str(job / name), *_verdict(job, Path(tmp), row, new, kind, name, atol, arrays, shared)))
    return report


def _arrays(job: Path, tmp: Path, row: dict[str, Any], new: Optional[dict[str, Any]]) -> dict[str, float]:
    """The largest absolute difference of each ``.npy`` of the row to the recompute (inf when it
    cannot be compared); a byte-identical pair is 0."""
    out = {}
    for kind, name in _files(row):
        if not name.endswith(".npy"):
            continue
        other = new.get(f"file_{kind}") if new else None
        path = job / name
        if not isinstance(other, str) or not path.is_file():
            out[kind] = float("inf")
        elif file_sha256(path) == new.get(f"sha256_{kind}"):
            out[kind] = 0.0
        else:
            try:
                out[kind] = _max_abs_diff(path, tmp / other)
            except (OSError, ValueError):  # not a readable array: no tolerance applies
                out[kind] = float("inf")
    return out


def _verdict(job: Path, tmp: Path, row: dict[str, Any], new: Optional[dict[str, Any]], kind: str, name: str,
             atol: float, arrays: dict[str, float], shared: bool) -> tuple[str, str]:
    path = job / name
    if not path.is_file():
        return "missing", "archived file is gone"
    recorded = row.get(f"sha256_{kind}")
    archived = file_sha256(path) == recorded
    if name.endswith(".npy"):
        diff = arrays.get(kind, float("inf"))
        if new is None or not isinstance(new.get(f"file_{kind}"), str):
            return ("missing", "the recompute did not produce it") if archived else ("different", CHANGED)
        if diff > atol:
            return "different", f"max abs diff {diff:.3g}"
        if not archived:
            return "different", f"{CHANGED} (max abs diff {diff:.3g} to the recompute)"
        return "identical", "" if diff == 0 else f"max abs diff {diff:.3g}"
    if not archived:
        return "different", CHANGED
    if new is None or not isinstance(new.get(f"file_{kind}"), str):
        return "missing", "the recompute did not produce it"
    if new.get(f"sha256_{kind}") == recorded:
        return "identical", ""
    if atol > 0 and not shared and arrays and all(d <= atol for d in arrays.values()) and any(d > 0 for d in arrays.values()):
        return "identical", "re-rendered from arrays within atol"
    return "different", "sha256 differs from the recompute's"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cnnviz.verify", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--atol", type=float, default=0.0)
    args = ap.parse_args(argv)
    register_configs()
    jobs = job_dirs(args.folder)
    if not jobs:
        print(f"cnnviz.verify: no archived run under {args.folder} (no .hydra/config.yaml)", file=sys.stderr)
        return 2
    bad = problems = unverified = 0
    for job in jobs:
        report = compare_job(job, args.atol)
        for path, verdict, detail in report.files:
            print(f"{verdict:<10} {path}" + (f"  ({detail})" if detail else ""))
        for problem in report.problems:
            print(f"cnnviz.verify: {problem}", file=sys.stderr)
        if report.unverified:
            print(f"cnnviz.verify: {report.unverified}; nothing to verify in {job}", file=sys.stderr)
        bad += report.bad
        problems += len(report.problems)
        unverified += report.unverified is not None
    tail = f", {unverified} job(s) with nothing to verify" if unverified else ""
    print(f"cnnviz.verify: {len(jobs)} job(s), {bad} file(s) not identical{tail}")
    if bad or problems:
        return 1
    return 2 if unverified else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["KEY", "JobReport", "compare_job", "main"]
