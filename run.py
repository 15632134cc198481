"""cnnviz entry point: ``python run.py method=gradcam image=spider`` (see README)."""
import sys

import hydra
from omegaconf import DictConfig

from cnnviz.choices import check_choices
from cnnviz.cli import CONF_DIR, task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    task(cfg)


if __name__ == "__main__":
    check_choices(sys.argv[1:], CONF_DIR)
    main()
