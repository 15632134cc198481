"""Command line: ``cnnviz ...`` is the same as ``python run.py ...``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register_configs
from .errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("cnnviz")
register_configs()


def task(cfg: DictConfig) -> None:
    from .runner import run

    hc = HydraConfig.get()
    try:
        run(cfg, Path(hc.runtime.output_dir))
    except ConfigError as e:
        log.error("configuration error: %s", e)
        if hc.mode == RunMode.MULTIRUN:
            raise  # the launcher records this job as failed and runs the others
        print(f"cnnviz: configuration error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"cnnviz: outputs in {hc.runtime.output_dir}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> None:
    task(cfg)


def main() -> None:
    from .choices import check_choices

    check_choices(sys.argv[1:], CONF_DIR)
    _main()
