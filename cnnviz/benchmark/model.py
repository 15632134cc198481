"""The benchmark CNN: four conv blocks (conv, BatchNorm, ReLU), global average pooling and a linear
head, trained on ``cnnviz.benchmark.data`` in a few minutes on a laptop CPU, and cached.

Its last conv block (``block4``) feeds GAP and the head directly, so CAM and Grad-CAM at that layer
are the textbook case. The same recipe trained on shuffled labels (``weights="shuffled"``) is the
model of the data-randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", §5): a
map that looks the same for it as for the trained network does not explain what the network learned.

Training is seeded (``torch.manual_seed`` in a forked RNG, a seeded batch order, no data loader
workers) and restores the caller's thread count; the checkpoint is a state dict written with
``torch.save`` under ``$CNNVIZ_HOME/benchmark/`` with its sha256 beside it, and is rebuilt when
either is missing or they disagree (``cached_checkpoint``).

    >>> from cnnviz.benchmark.model import load_benchmark_cnn
    >>> net, sha256, path = load_benchmark_cnn("trained")   # trains on first use, then reads the cache
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..data.images import cache_dir
from .data import CLASSES, make_dataset

log = logging.getLogger("cnnviz")

#: the module whose output is the last conv block's feature map (conf/model/benchmark_cnn.yaml default_layer)
DEFAULT_LAYER = "block4"
#: inputs are (x / 255 - MEAN) / STD, as conf/model/benchmark_cnn.yaml's preprocess says
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
WEIGHTS = ("trained", "shuffled")


@dataclass(frozen=True)
class Recipe:
    """How the benchmark CNN is trained; the cache file's name carries ``tag()``, so changing any
    field trains a new checkpoint instead of reading an old one. The training set is ``seed``, the
    held-out set ``seed + 1`` (``cnnviz.benchmark.data.make_dataset``)."""
    n_train: int = 4000
    n_test: int = 500
    size: int = 48
    epochs: int = 8
    batch_size: int = 64
    lr: float = 5e-3
    width: int = 12
    seed: int = 0

    def tag(self) -> str:
        """The recipe in a file name: ``48px-w12-n4000-e8-b64-lr0.005-seed0`` (``n_test`` changes no weight)."""
        return (f"{self.size}px-w{self.width}-n{self.n_train}-e{self.epochs}-b{self.batch_size}-lr{self.lr:g}"
                f"-seed{self.seed}")


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


class BenchmarkCNN(nn.Module):
    """conv-BN-ReLU blocks of ``width``, ``2 width``, ``4 width``, ``4 width`` channels (the first three
    halve the resolution: 48 px gives a 6x6 map at ``block4``), then GAP and a linear head."""

    def __init__(self, num_classes: int = len(CLASSES), width: int = 16):
        super().__init__()
        self.block1 = _block(3, width, True)
        self.block2 = _block(width, 2 * width, True)
        self.block3 = _block(2 * width, 4 * width, True)
        self.block4 = _block(4 * width, 4 * width, False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(torch.flatten(self.pool(x), 1))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` images as the normalised ``(N, 3, H, W)`` float tensor the network reads."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train(images: np.ndarray, labels: np.ndarray, recipe: Recipe = Recipe(), progress: bool = True,
          threads: Optional[int] = None) -> BenchmarkCNN:
    """A ``BenchmarkCNN`` trained on ``images``/``labels`` with Adam and a one-cycle learning rate,
    random horizontal and vertical flips (a class is a shape at any angle), in eval mode on return.

    Seeded by ``recipe.seed``: the same data and thread count give the same weights bit for bit.
    ``threads``: intra-op threads during training (the caller's count is restored); None keeps it."""
    from tqdm.auto import tqdm

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            net = BenchmarkCNN(len(CLASSES), recipe.width)
            x, y = to_input(images), torch.from_numpy(np.asarray(labels, np.int64))
            steps_per_epoch = max(1, len(x) // recipe.batch_size)
            opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
            order = torch.Generator().manual_seed(recipe.seed)
            net.train()
            bar = tqdm(total=recipe.epochs * steps_per_epoch, desc="training benchmark_cnn", unit="step",
                       disable=not progress, leave=False)
            try:
                for _ in range(recipe.epochs):
                    perm = torch.randperm(len(x), generator=order)
                    for s in range(steps_per_epoch):
                        idx = perm[s * recipe.batch_size:(s + 1) * recipe.batch_size]
                        xb = x[idx]
                        flips = torch.rand(2, generator=order)
                        if flips[0] < 0.5:
                            xb = xb.flip(3)
                        if flips[1] < 0.5:
                            xb = xb.flip(2)
                        loss = nn.functional.cross_entropy(net(xb), y[idx])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sched.step()
                        bar.update()
                        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            finally:
                bar.close()
    finally:
        torch.set_num_threads(before)
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``net`` (in eval mode) on ``images``."""
    was = net.training
    net.eval()
    try:
        hits = sum(int((net(to_input(images[i:i + batch_size])).argmax(1) == torch.from_numpy(
            np.asarray(labels[i:i + batch_size]))).sum()) for i in range(0, len(images), batch_size))
    finally:
        net.train(was)
    return hits / len(images)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_checkpoint(path: Path, build: Callable[[], dict], what: str) -> tuple[Path, str]:
    """``path`` and its sha256, after building it with ``build()`` (a state dict) unless it exists and
    matches the sha256 recorded in ``<path>.sha256``.

    A file without its record, or one whose bytes changed (a truncated copy, an interrupted write by
    an older version), is not trusted: it is rebuilt, with a log line saying why. The file is written
    to a temporary name and renamed, so a crash never leaves a half-written checkpoint under ``path``."""
    path = Path(path)
    record = path.with_name(path.name + ".sha256")
    if path.is_file() and record.is_file():
        expected = record.read_text().split()[0] if record.read_text().split() else ""
        actual = _sha256(path)
        if actual == expected:
            return path, actual
        log.warning("%s: '%s' has sha256 %s, its record says %s; rebuilding it", what, path, actual[:12], expected[:12])
    elif path.is_file():
        log.warning("%s: '%s' has no sha256 record beside it; rebuilding it", what, path)
    else:
        log.info("%s: no cached checkpoint at '%s'; building it (once)", what, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # saved through a buffer: torch.save names the archive's folder after the file it writes
        # (here the temporary name, with a pid), which would give every build another sha256
        buffer = io.BytesIO()
        torch.save(build(), buffer)
        tmp.write_bytes(buffer.getvalue())
        digest = _sha256(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    record.write_text(f"{digest}  {path.name}\n")
    return path, digest


def checkpoint_path(weights: str, recipe: Recipe = Recipe(), root: Optional[Path] = None) -> Path:
    """Where the ``weights`` (trained | shuffled) checkpoint of ``recipe`` is cached."""
    return Path(root or cache_dir()) / "benchmark" / f"benchmark_cnn-{weights}-{recipe.tag()}.pt"


def shuffled_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """``labels`` in a seeded random order: the same images, with the link between image and class cut."""
    return np.random.default_rng([seed, 1]).permutation(np.asarray(labels))


def train_checkpoint(weights: str, recipe: Recipe = Recipe(), progress: bool = True) -> dict:
    """The state dict of the benchmark CNN trained by ``recipe`` on the true (``trained``) or the
    shuffled (``shuffled``) labels of the training set, logging its held-out accuracy."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    images, labels, _ = make_dataset(recipe.n_train, recipe.seed, recipe.size)
    if weights == "shuffled":
        labels = shuffled_labels(labels, recipe.seed)
    net = train(images, labels, recipe, progress=progress)
    test_images, test_labels, _ = make_dataset(recipe.n_test, recipe.seed + 1, recipe.size)
    log.info("benchmark_cnn (%s labels): held-out accuracy %.3f on %d images", weights,
             accuracy(net, test_images, test_labels), recipe.n_test)
    return net.state_dict()


def load_benchmark_cnn(weights: str, recipe: Recipe = Recipe(), progress: bool = True,
                       root: Optional[Path] = None) -> tuple[BenchmarkCNN, str, Path]:
    """The ``trained`` or ``shuffled`` benchmark CNN in eval mode, its checkpoint's sha256 and path;
    trained and cached on first use (``cached_checkpoint``)."""
    path, digest = cached_checkpoint(checkpoint_path(weights, recipe, root),
                                     lambda: train_checkpoint(weights, recipe, progress), f"benchmark_cnn ({weights})")
    net = BenchmarkCNN(len(CLASSES), recipe.width)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval(), digest, path
