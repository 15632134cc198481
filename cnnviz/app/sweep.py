"""A sweep folder as a whole: one merged manifest and gallery over its job folders.

Hydra calls ``MergeSweep.on_multirun_end`` after a multirun that raised no error; when a job failed,
the command line (``cli.entry``) merges after Hydra has returned, so the sweep root always gets its
manifest. ``python scripts/merge_manifest.py SWEEP_DIR`` does the same by hand (an interrupted sweep).
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from ..output.files import atomic_write
from ..output.gallery import write_gallery
from ..output.summary import write_summary

log = logging.getLogger("cnnviz")


def job_manifests(sweep_dir: Path) -> list[Path]:
    """Each job's manifest; a manifest inside another job's folder (an ``experiment=select`` job's
    ``candidates/*``, merged into its own) is that job's part, not a job of the sweep."""
    found = sorted(p for p in Path(sweep_dir).rglob("manifest.csv") if p.parent != Path(sweep_dir))
    jobs = {p.parent for p in found}
    return [p for p in found if not any(parent in jobs for parent in p.parent.parents)]


JOB_ERROR = "job_error.json"


def record_job_error(job_dir: Path, error: str) -> None:
    """Note in a job's folder that the job stopped before computing (e.g. a configuration error):
    the merged manifest gets an ``error`` row for it."""
    atomic_write(Path(job_dir) / JOB_ERROR, json.dumps({"status": "error", "error": error}).encode())


def merge(sweep_dir: str | Path) -> pd.DataFrame:
    """Write ``manifest.csv``, ``index.html`` and ``contact_sheet.png`` at the sweep root; the
    ``job`` column names each row's job folder and file paths become relative to the root. A job
    that stopped before computing is one ``error`` row."""
    from ..output.manifest import read_manifest

    root = Path(sweep_dir)
    frames = []
    for path in job_manifests(root):
        frame, damage = read_manifest(path)
        if damage:
            log.warning("%s", damage)
        job = str(path.parent.relative_to(root))
        for col in [c for c in frame.columns if c.startswith("file_")]:
            frame[col] = frame[col].map(lambda f: f"{job}/{f}" if isinstance(f, str) else f)
        frame.insert(0, "job", job)
        frames.append(frame)
    for path in sorted(root.rglob(JOB_ERROR)):
        if not (path.parent / "manifest.csv").is_file():
            note = json.loads(path.read_text())
            frames.append(pd.DataFrame([{"job": str(path.parent.relative_to(root)), "status": "error", "error": note["error"]}]))
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not merged.empty:
        atomic_write(root / "manifest.csv", merged.to_csv(index=False).encode())
        write_gallery(root, merged)
        log.info("merged %d job manifest(s), %d rows, into %s", len(frames), len(merged), root / "manifest.csv")
    return merged


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


@dataclass
class _Started:
    """The multirun of this process: its root, whether failures are allowed, whether it is merged."""

    root: Optional[Path] = None
    allow_failures: bool = False
    merged: bool = False


STARTED = _Started()


def planned_jobs(sweep: Path) -> Optional[int]:
    """How many jobs the multirun asked for (the product of its sweep overrides in multirun.yaml);
    None without a readable multirun.yaml."""
    import yaml
    from itertools import product

    path = Path(sweep) / "multirun.yaml"
    if not path.is_file():
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("overrides", {}).get("task", [])
    sizes = [len(list(o.sweep_iterator())) for o in OverridesParser.create().parse_overrides(overrides)
             if o.is_sweep_override()]
    return len(list(product(*[range(n) for n in sizes]))) if sizes else 1


def started(root: Path, allow_failures: bool) -> None:
    STARTED.root, STARTED.allow_failures, STARTED.merged = Path(root), allow_failures, False


def merge_and_summarize(root: Path) -> pd.DataFrame:
    frame = merge(root)
    table = write_summary(root, frame)  # summary.csv / .png when the jobs measured metrics
    if not table.empty:
        log.info("summary of %d method x layer group(s), ranked by %s: %s", len(table), table.attrs["ranked_by"],
                 root / "summary.csv")
    if STARTED.root is not None and Path(root) == STARTED.root:
        STARTED.merged = True
    return frame


def finish(code: int) -> int:
    """After Hydra has returned (or exited) from a multirun: merge if Hydra did not, print
    ``N ok, M failed`` and where the merged manifest is, and the sweep's exit status (3 when an item
    or a job failed and failures are not allowed)."""
    root = STARTED.root
    frame = pd.read_csv(root / "manifest.csv") if STARTED.merged and (root / "manifest.csv").is_file() else merge_and_summarize(root)
    failed = int((frame["status"] != "ok").sum()) if "status" in frame else 0
    jobs = frame["job"].nunique() if "job" in frame else 0
    planned = planned_jobs(root) or jobs
    silent = max(planned - jobs, 0)  # cancelled, killed or timed out before writing a row
    print(f"cnnviz: {len(frame) - failed} ok, {failed} failed in {jobs} job(s)"
          + (f"; {silent} of {planned} job(s) wrote no row (cancelled, killed or timed out?): "
             f"python scripts/status.py {root}" if silent else "")
          + f"; manifest: {root / 'manifest.csv'}", file=sys.stdout)
    if failed or silent:  # a failed item, or a job that never wrote one, fails the sweep unless allowed
        return 0 if STARTED.allow_failures else 3
    return code


class MergeSweep(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        merge_and_summarize(Path(config.hydra.sweep.dir))
