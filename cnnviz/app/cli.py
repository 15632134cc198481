"""Command line: ``cnnviz ...`` is the same as ``python run.py ...``.

Importing this module imports Hydra and the configuration schema only: torch, the techniques and the
writers are imported inside the task (``_run_job``) and the multirun callback, so ``--help``,
``--cfg job`` and every configuration error caught before Hydra answer without them.

Exit status: 0 when every item is ``ok``; 2 for a configuration error (nothing computed, an
existing archive left as it was); 3 when some items (or, in a multirun, some jobs) failed — their
manifest rows say why, and ``--allow-failures`` (or ``allow_failures=true``) turns that into 0.
The last line printed says ``N ok, M failed`` and where the manifest is.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from .schema import register_configs
from ..core.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
EXIT_CONFIG = 2
EXIT_FAILED = 3
log = logging.getLogger("cnnviz")
register_configs()


class JobFailed(Exception):
    """A multirun job that stopped on a configuration error (Hydra records the job as failed)."""


def say(message: str) -> None:
    from .runner import plain_text

    print(f"cnnviz: {plain_text(message)}", file=sys.stderr)


def run_job(cfg: DictConfig, out_dir: Path, overrides: list[str], hydra_cfg: Optional[DictConfig] = None,
            key: str = "hydra.run.dir") -> int:
    """Check ``cfg``, record it in ``out_dir/.hydra``, compute every item; the exit status
    (a configuration error is printed and gives ``EXIT_CONFIG``)."""
    try:
        return _run_job(cfg, out_dir, overrides, hydra_cfg, key)
    except ConfigError as e:
        log.error("configuration error: %s", e)
        say(f"configuration error: {e}")
        return EXIT_CONFIG


def _run_job(cfg: DictConfig, out_dir: Path, overrides: list[str], hydra_cfg: Optional[DictConfig], key: str) -> int:
    """``run_job`` without the printing of configuration errors.

    The folder is locked for the whole job; the archived configuration is compared, and the
    manifest read, before the model loads; ``.hydra/`` is written only after every check passed.
    """
    from .archive import check_same_config, exclusive, record_config
    from .plan import build_plan
    from .runner import execute

    out_dir = Path(out_dir)
    with exclusive(out_dir, key):
        check_same_config(out_dir, cfg, key)
        if cfg.get("select") is not None:  # experiment=select: one sub-run per candidate (cnnviz.app.select)
            from .select import prepare_selection, run_selection

            selection = prepare_selection(cfg, out_dir, hydra_cfg)
            record_config(out_dir, cfg, overrides, hydra_cfg)
            (out_dir / "job_error.json").unlink(missing_ok=True)
            frame = run_selection(selection)
        else:
            manifest = open_manifest(out_dir / "manifest.csv", bool(cfg.resume))
            start = time.perf_counter()
            plan = build_plan(cfg)
            record_config(out_dir, cfg, overrides, hydra_cfg)
            (out_dir / "job_error.json").unlink(missing_ok=True)  # a multirun job's earlier failed start
            frame = execute(plan, out_dir, time.perf_counter() - start, manifest)
            if plan.metrics:
                print_summary(out_dir, frame)
    failed = int((frame["status"] != "ok").sum())
    print(f"cnnviz: {len(frame) - failed} ok, {failed} failed; manifest: {out_dir / 'manifest.csv'}")
    return EXIT_FAILED if failed and not cfg.get("allow_failures", False) else 0


def print_summary(out_dir: Path, frame) -> None:
    """The ranked metric table of a run, on stdout, and where its page is (``summary.html``)."""
    from ..output.summary import printable, summarize

    table = summarize(frame)
    if not table.empty:
        print(printable(table))
        if (out_dir / "summary.html").is_file():
            print(f"cnnviz: summary: {out_dir / 'summary.html'}")


def open_manifest(path: Path, resume: bool):
    """The folder's manifest; a damaged one is a configuration error unless ``resume`` (then its
    intact rows are kept, a copy of the damaged file is kept beside it, the rest is recomputed)."""
    import shutil

    from ..output.manifest import Manifest, ManifestError

    try:
        manifest = Manifest(path)
    except ManifestError as e:
        raise ConfigError(f"manifest: {e}") from None
    if manifest.damage:
        if not resume:
            raise ConfigError(f"manifest: {manifest.damage}. Run again with resume=true to keep the intact rows "
                              "and recompute the rest, or run into another folder")
        kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, kept)
        log.warning("%s; a copy of the damaged file is kept as %s", manifest.damage, kept.name)
    return manifest


def task(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    resume_if_restarted(cfg)
    try:
        status = _run_job(cfg, out_dir, list(hc.overrides.task), hc, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    except ConfigError as e:
        log.error("configuration error: %s", e)
        if not multirun:
            say(f"configuration error: {e}")
            sys.exit(EXIT_CONFIG)
        from .sweep import record_job_error

        record_job_error(out_dir, f"configuration error: {e}")
        raise JobFailed(f"configuration error: {e}") from None  # Hydra records the job as failed and runs the others
    if status and not multirun:
        sys.exit(status)  # in a multirun the failed items are in the job's manifest; the sweep's exit status counts them


# --- SLURM: requeued jobs and shards ------------------------------------------------------------------


def slurm_restart_count() -> int:
    """How many times SLURM has restarted this job (``SLURM_RESTART_COUNT``, set in a job that was
    requeued: ``scontrol requeue``, preemption, a failed node, submitit's own checkpoint-and-requeue);
    0 in a first run and outside SLURM."""
    try:
        return max(int(os.environ.get("SLURM_RESTART_COUNT") or 0), 0)
    except ValueError:
        return 0


def resume_if_restarted(cfg: DictConfig) -> None:
    """A restarted job runs again with the same overrides, so into the same folder: give it ``resume=true``
    semantics, so that the items its earlier run completed are kept, not computed again. (The earlier
    run's folder lock died with it: ``flock`` is released when its process exits, SIGKILL included.)"""
    restarts = slurm_restart_count()
    if restarts:
        log.info("restarted by SLURM (restart %d): resuming", restarts)
        if not cfg.resume:
            with read_write(cfg):
                cfg.resume = True


def expand_shards(args: list[str]) -> list[str]:
    """``args``, plus ``shard=range(0,N)`` when a multirun asks for ``shards=N`` (N > 1) and names no
    ``shard``: one job per part, which the SLURM launcher submits as one array job. A single run keeps
    the ``shard`` it is given (default 0)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(a in ("-m", "--multirun") for a in args)
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-") and "=" in a])
    except Exception:
        return args  # malformed: Hydra says what is wrong
    by_key = {o.key_or_group: o for o in overrides}
    mode = by_key.get("hydra.mode")
    multirun = multirun or (mode is not None and str(mode.value()).upper() == "MULTIRUN")
    shards = by_key.get("shards")
    if not multirun or shards is None or "shard" in by_key or shards.is_delete():
        return args
    if shards.is_sweep_override():
        raise ConfigError(f"{shards.input_line}: a multirun over several shard counts is not split into jobs by "
                          "itself; run one shard count per sweep, or name the parts (shards=4 'shard=range(0,4)')")
    n = shards.value()
    if not isinstance(n, int) or isinstance(n, bool) or n <= 1:
        return args  # 1: nothing to split; not an int: the configuration check names the key
    return args + [f"shard=range(0,{n})"]


class FolderCheck(Callback):
    """Hydra callback: an output folder that cannot be created is one line and exit status 2,
    before Hydra makes it (and prints a traceback); a multirun's sweep folder is noted for the end."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _make_folder(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from ..app import sweep

        root = Path(str(config.hydra.sweep.dir))
        _make_folder(root, "hydra.sweep.dir")
        sweep.started(root, bool(config.get("allow_failures", False)))


def _make_folder(folder: Path, key: str) -> None:
    import os

    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        say(f"configuration error: {key}: cannot create the output folder {folder} ({e.strerror or e}); "
            f"choose another folder ({key}=...)")
        sys.exit(EXIT_CONFIG)


def entry(hydra_main: Callable[[], None], argv: Optional[list[str]] = None) -> None:
    """Run a ``@hydra.main`` function as the command line does: close-match checks before Hydra,
    ``--allow-failures``, ``shards=N`` in a multirun as N jobs (``expand_shards``), and a multirun's exit
    status and merged manifest even when jobs failed."""
    from .choices import check_choices

    args = list(sys.argv[1:] if argv is None else argv)
    if "--allow-failures" in args:
        args = [a for a in args if a != "--allow-failures"] + ["allow_failures=true"]
        sys.argv[1:] = args
    try:
        expanded = expand_shards(args)
    except ConfigError as e:
        print(f"cnnviz: configuration error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if expanded != args:
        args = expanded
        sys.argv[1:] = args
    check_choices(args, CONF_DIR)
    try:
        hydra_main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    # the sweep module (pandas, the gallery) is imported by the multirun callback only: --help, --cfg and
    # configuration errors answer without it
    sweep = sys.modules.get(f"{__package__}.sweep")
    if sweep is not None and sweep.STARTED.root is not None:
        code = sweep.finish(code)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> None:
    task(cfg)


def main() -> None:
    entry(_main)
