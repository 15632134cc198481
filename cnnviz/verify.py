"""Recompute an archived run (or every job of a sweep) and compare it with what is on disk.

    python -m cnnviz.verify RUN_OR_SWEEP_DIR [--atol 0]

Each job is rebuilt from its archived ``.hydra/config.yaml`` and recomputed into a temporary folder
by the runner's own code path; every file of every ``ok`` manifest row is then reported as
identical, different (with the largest absolute difference of the raw ``.npy`` arrays) or missing.
On the CPU a recompute is bit-identical; ``--atol`` accepts raw arrays that differ by at most that
much (GPU runs), in which case their PNGs are not compared. Exit status 1 on any difference.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from .config import register_configs
from .files import file_sha256
from .manifest import KEY, _key


def job_dirs(folder: Path) -> list[Path]:
    if (folder / ".hydra" / "config.yaml").is_file():
        return [folder]
    return sorted(p.parent.parent for p in folder.rglob(".hydra/config.yaml"))


def compare_job(job: Path, atol: float) -> list[tuple[str, str, str]]:
    """(file, verdict, detail) for every file of every ok row of one job folder."""
    from .runner import run

    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    cfg.resume = False
    archived = pd.read_csv(job / "manifest.csv")
    with tempfile.TemporaryDirectory(prefix="cnnviz-verify-") as tmp:
        fresh = run(cfg, Path(tmp))
        by_key = {_key(r): r for r in fresh.to_dict("records") if r.get("status") == "ok"}
        report = []
        for row in archived.to_dict("records"):
            if row.get("status") != "ok":
                continue
            new = by_key.get(_key(row))
            for col in [c for c in row if c.startswith("file_") and isinstance(row[c], str)]:
                name = row[col]
                path = job / name
                if not path.is_file():
                    report.append((str(path), "missing", "archived file is gone"))
                    continue
                if new is None or not isinstance(new.get(col), str):
                    report.append((str(path), "missing", "the recompute did not produce it"))
                    continue
                if file_sha256(path) == new["sha256_" + col[5:]] == row["sha256_" + col[5:]]:
                    report.append((str(path), "identical", ""))
                    continue
                if name.endswith(".npy"):
                    diff = float(np.max(np.abs(np.load(path).astype(np.float64) - np.load(Path(tmp) / new[col]).astype(np.float64))))
                    report.append((str(path), "identical" if diff <= atol else "different", f"max abs diff {diff:.3g}"))
                elif atol > 0:
                    report.append((str(path), "identical", "rendering of arrays within atol"))
                else:
                    report.append((str(path), "different", "sha256 differs"))
        return report


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
    bad = 0
    for job in jobs:
        for path, verdict, detail in compare_job(job, args.atol):
            bad += verdict != "identical"
            print(f"{verdict:<10} {path}" + (f"  ({detail})" if detail else ""))
    print(f"cnnviz.verify: {len(jobs)} job(s), {bad} file(s) not identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["KEY", "compare_job", "main"]
