"""``env.json``: what is needed to reproduce a run."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional


def _git(*args: str) -> Optional[str]:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_state() -> tuple[Optional[str], Optional[bool]]:
    """(commit, whether tracked files differ from it), from one ``git status`` (None, None outside git)."""
    status = _git("status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if status is None:
        return None, None
    lines = status.splitlines()
    commit = next((l.split()[2] for l in lines if l.startswith("# branch.oid ")), None)
    return (None if commit == "(initial)" else commit), any(not l.startswith("#") for l in lines)


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def environment(device: str, seed: int, weights_sha256: Optional[str]) -> dict[str, Any]:
    import torch

    commit, dirty = _git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {m: _version(m) for m in ("torch", "torchvision", "timm", "hydra", "omegaconf", "numpy", "PIL", "pandas")},
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "num_threads": torch.get_num_threads(),
        "seed": seed,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "weights_sha256": weights_sha256,
    }
