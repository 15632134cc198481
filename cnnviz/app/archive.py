"""A run folder as an archive: one writer at a time, one configuration per folder, and the
configuration recorded only once it has been checked.

Hydra is told not to write ``.hydra/`` itself (``hydra.output_subdir: null``): it would replace an
archive's ``config.yaml`` before cnnviz could refuse a bad or different configuration. The runner
calls ``record_config`` after every check has passed.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from ..core.errors import ConfigError
from ..models.registry import canonical_loader
from ..output.files import atomic_write

#: Keys that may differ between runs into one folder: they change which items are (re)computed,
#: how failures are reported or how memory and batches are managed, never what an item's files hold
#: (a batch gives each image the maps it gets alone, up to float rounding: tests/test_batches.py).
#: Metrics are not part of an item's identity: a resume with a metric switched on recomputes the
#: items without it.
MAY_DIFFER = ("resume", "allow_failures", "metrics", "reuse_memory", "batch_size")

CONFIG = Path(".hydra") / "config.yaml"
LOCK = ".cnnviz.lock"


class FolderBusy(ConfigError):
    """Another process is writing into the run folder."""


@contextmanager
def exclusive(folder: Path, key: str = "hydra.run.dir") -> Iterator[None]:
    """Hold the folder's lock for the block: a second run into the same folder is refused.

    ``flock`` belongs to the open file, so the kernel releases it when the holder exits in any way
    (kill -9 included): a lock never outlives its process. The lock file itself stays (removing it
    would let two later runs lock two different files).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise ConfigError(f"{key}: cannot write into the output folder {folder} ({e.strerror or e}); "
                          "choose another folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusy(f"{key}: another cnnviz run ({holder}) is writing into {folder}; wait for it to "
                             "finish, or run into another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def differences(archived: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain containers (``MAY_DIFFER`` ignored at the top)."""
    if isinstance(archived, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(archived) | set(current), key=str):
            if not prefix and key in MAY_DIFFER:
                continue
            if key not in archived or key not in current:
                out.append(f"{prefix}{key}")
            else:
                out.extend(differences(archived[key], current[key], f"{prefix}{key}."))
        return out
    return [] if archived == current else [prefix.rstrip(".") or "(the whole configuration)"]


def check_same_config(folder: Path, cfg: DictConfig, key: str = "hydra.run.dir") -> None:
    """``ConfigError`` when ``folder`` archives a run of another configuration: its manifest would
    then mix rows of two configurations, and ``verify`` could check only one of them."""
    path = folder / CONFIG
    if not path.is_file():
        return
    try:
        archived = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:
        raise ConfigError(f"{key}: {path} cannot be read ({type(e).__name__}: {e}); this folder's archive is "
                          "damaged: run into another folder") from None
    current = OmegaConf.to_container(cfg, resolve=False)
    for conf in (archived, current):  # a loader's former import path names the same loader
        if isinstance(conf.get("model"), dict) and "_target_" in conf["model"]:
            conf["model"]["_target_"] = canonical_loader(conf["model"]["_target_"])
    diff = differences(archived, current)
    if diff:
        shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
        raise ConfigError(f"{key}: {folder} holds the outputs of another configuration (it differs in {shown}); "
                          "run into a new folder, or repeat that configuration (see its .hydra/overrides.yaml)")


def record_config(folder: Path, cfg: DictConfig, overrides: list[str], hydra_cfg: Optional[DictConfig] = None) -> None:
    """Write ``.hydra/config.yaml``, ``overrides.yaml`` and (under Hydra) ``hydra.yaml``, each atomically."""
    meta = folder / ".hydra"
    atomic_write(meta / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    atomic_write(meta / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))).encode())
    if hydra_cfg is not None:
        atomic_write(meta / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})).encode())
