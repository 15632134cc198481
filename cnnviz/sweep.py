"""A sweep folder as a whole: one merged manifest and gallery over its job folders.

Hydra calls ``MergeSweep.on_multirun_end`` after a multirun; it is not called when a job failed or
the sweep was interrupted, so ``python scripts/merge_manifest.py SWEEP_DIR`` does the same by hand.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .files import atomic_write
from .gallery import write_gallery
from .summary import write_summary

log = logging.getLogger("cnnviz")


def job_manifests(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in Path(sweep_dir).rglob("manifest.csv") if p.parent != Path(sweep_dir))


def merge(sweep_dir: str | Path) -> pd.DataFrame:
    """Write ``manifest.csv``, ``index.html`` and ``contact_sheet.png`` at the sweep root; the
    ``job`` column names each row's job folder and file paths become relative to the root."""
    root = Path(sweep_dir)
    frames = []
    for path in job_manifests(root):
        frame = pd.read_csv(path)
        job = str(path.parent.relative_to(root))
        for col in [c for c in frame.columns if c.startswith("file_")]:
            frame[col] = frame[col].map(lambda f: f"{job}/{f}" if isinstance(f, str) else f)
        frame.insert(0, "job", job)
        frames.append(frame)
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


class MergeSweep(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        table = write_summary(root, merge(root))  # summary.csv / .png when the jobs measured metrics
        if not table.empty:
            log.info("summary of %d method x layer group(s), ranked by %s: %s", len(table), table.attrs["ranked_by"],
                     root / "summary.csv")
