"""cnnviz entry point: ``python run.py method=gradcam image=spider`` (see README)."""
import hydra
from omegaconf import DictConfig

from cnnviz.app.cli import entry, task


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    task(cfg)


if __name__ == "__main__":
    entry(main)
