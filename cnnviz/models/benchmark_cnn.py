"""``model=benchmark_cnn``: the small CNN of the ground-truth benchmark (``cnnviz.benchmark``),
trained on its procedural shapes on first use and cached under ``$CNNVIZ_HOME/benchmark/``."""
from __future__ import annotations

import logging
from typing import Optional

from ..core.errors import ConfigError
from .loaders import LoadedModel, _seeded
from .registry import model_loader

log = logging.getLogger("cnnviz")


@model_loader
def benchmark_cnn(arch: str = "benchmark_cnn", weights: Optional[str] = "trained", seed: int = 0,
                  input_size: Optional[int] = None) -> LoadedModel:
    """The benchmark CNN with ``weights``: ``trained`` (true labels), ``shuffled`` (the same recipe on
    shuffled labels, for the data-randomization test) or null (a seeded random init). The trained
    copies do not depend on ``seed``: one fixed recipe (``cnnviz.benchmark.model.Recipe``) is trained
    once per cache, whatever seed a run uses. Classes are the shape names (ring, cross, ...)."""
    from ..benchmark.data import CLASSES
    from ..benchmark.model import WEIGHTS, BenchmarkCNN, Recipe, load_benchmark_cnn

    recipe = Recipe()
    if input_size is not None and int(input_size) != recipe.size:
        log.warning("model.preprocess.input_size=%s: benchmark_cnn is trained on %d px images; its accuracy "
                    "holds at that size only", input_size, recipe.size)
    if weights is None:
        net = _seeded(seed, lambda: BenchmarkCNN(len(CLASSES), recipe.width))
        return LoadedModel(net.eval(), arch, f"random(seed={seed})", None, list(CLASSES))
    if weights not in WEIGHTS:
        raise ConfigError(f"model.weights for benchmark_cnn must be one of {', '.join(WEIGHTS)} or null, got '{weights}'")
    net, digest, path = load_benchmark_cnn(str(weights), recipe)
    return LoadedModel(net, arch, str(weights), digest, list(CLASSES),
                       origin=f"model.weights: benchmark_cnn {weights} '{path}'")
