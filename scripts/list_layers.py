"""Print a model's module tree with each layer's output shape: `python scripts/list_layers.py model=vgg19`."""
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnviz.app.schema import register_configs  # noqa: E402
from cnnviz.core.hooks import model_state_kept, removing  # noqa: E402
from cnnviz.app.plan import load_model, resolve_preprocess  # noqa: E402

CONF = Path(__file__).resolve().parent.parent / "conf"


def main(overrides: list[str]) -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    resolve_preprocess(cfg.model)
    loaded = load_model(cfg.model, int(cfg.seed))
    shapes: dict[str, tuple] = {}
    size = int(cfg.model.preprocess.input_size)
    with removing([]) as handles, model_state_kept(loaded.module), torch.no_grad():
        for n, m in loaded.module.named_modules():
            if n:
                handles.append(m.register_forward_hook(
                    lambda mod, i, o, n=n: shapes.__setitem__(n, tuple(o.shape) if torch.is_tensor(o) else type(o).__name__)))
        loaded.module(torch.zeros(1, 3, size, size))
    default = cfg.model.default_layer
    for name, module in loaded.module.named_modules():
        if name:
            depth = name.count(".")
            mark = "  <- default_layer" if name == default else ""
            print(f"{'  ' * depth}{name}  {type(module).__name__}  {shapes.get(name, '(not called)')}{mark}")


if __name__ == "__main__":
    main(sys.argv[1:])
