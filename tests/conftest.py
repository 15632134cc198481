"""Shared fixtures: tiny hand-built models, an isolated image cache, and a run.py launcher."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = ROOT.parent / "shared" / "images"


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory) -> Path:
    """A private CNNVIZ_HOME, seeded from ../shared/images when it exists."""
    cache = tmp_path_factory.mktemp("cnnviz-cache")
    (cache / "images").mkdir()
    if SHARED_IMAGES.is_dir():
        for f in SHARED_IMAGES.glob("*.png"):
            shutil.copy(f, cache / "images" / f.name)
    return cache


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(image_cache) -> Iterator[None]:
    """CNNVIZ_HOME is the session's private cache from the first fixture on: module-scoped fixtures are set
    up before function-scoped ones, and one that trained the benchmark CNN used to write to ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNVIZ_HOME", str(image_cache))
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def _cache_kept(image_cache, monkeypatch):
    """A test that moves CNNVIZ_HOME (monkeypatch) gets it back afterwards; one that changed it by hand too."""
    monkeypatch.setenv("CNNVIZ_HOME", str(image_cache))


@pytest.fixture(autouse=True)
def _one_stream():
    """Each test starts with one stream, the library's default, whatever the enclosing process set."""
    from cnnviz.speed import streams

    with streams.using(1):
        yield


needs_shared_images = pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="../shared/images is not present")


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``proc``, after asserting that it exited 0 (its output tails in the failure message)."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def one_thread_everywhere() -> Iterator[None]:
    """One intra-op thread here and in child processes (``OMP_NUM_THREADS``): an in-process
    recompute is then bit-identical to a run.py run, and a busy 2-core machine is not oversubscribed."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        mp.undo()


def run_cli(args: list[str], run_dir: Path, cache: Path, timeout: float = 300, multirun_dir: Path | None = None):
    """Run ``python run.py`` as a user would; returns the CompletedProcess. The process is a fork of a
    process that has already imported run.py's dependencies (``tests/_zygote.py``), unless
    ``CNNVIZ_TEST_FORK=0``: then a new interpreter, as a user's shell starts it."""
    env = {**os.environ, "CNNVIZ_HOME": str(cache), "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    dirs = [f"hydra.run.dir={run_dir}"]
    if multirun_dir is not None:
        dirs.append(f"hydra.sweep.dir={multirun_dir}")
    argv = [sys.executable, str(ROOT / "run.py"), *args, *dirs]
    # a launcher's worker processes (joblib's loky, submitit) hung at shutdown under a forked parent: those
    # runs get a new interpreter
    forked = os.environ.get("CNNVIZ_TEST_FORK", "1") != "0" and not any(a.startswith("hydra/launcher=") for a in args)
    if forked and hasattr(os, "fork"):
        return Zygote.shared().run(argv, ROOT, env, timeout)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class Zygote:
    """The client side of ``tests/_zygote.py``: one zygote per test session, restarted if it died."""

    _shared: "Zygote | None" = None

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_zygote.py"))], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @classmethod
    def shared(cls) -> "Zygote":
        if cls._shared is None or cls._shared.proc.poll() is not None:
            cls._shared = cls()
        return cls._shared

    @classmethod
    def stop(cls) -> None:
        if cls._shared is not None and cls._shared.proc.poll() is None:
            cls._shared.proc.stdin.close()
            cls._shared.proc.wait(timeout=30)
        cls._shared = None

    def _reply(self, key: str, timeout: float | None) -> int:
        import json
        import select

        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the test zygote (tests/_zygote.py) exited with {self.proc.wait()}")
        return int(json.loads(line)[key])

    def run(self, argv: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        import json
        import signal
        import tempfile

        with tempfile.TemporaryDirectory(prefix="run-cli-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "env": env, "out": str(out),
                                              "err": str(err)}) + "\n")
            self.proc.stdin.flush()
            pid = self._reply("pid", 600)  # the first call waits for the imports
            try:
                rc = self._reply("rc", timeout)
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                self._reply("rc", 60)
                raise subprocess.TimeoutExpired(argv, timeout, out.read_bytes(), err.read_bytes()) from None
            return subprocess.CompletedProcess(argv, rc, out.read_text(errors="replace"), err.read_text(errors="replace"))


@pytest.fixture(scope="session", autouse=True)
def _zygote_stopped() -> Iterator[None]:
    yield
    Zygote.stop()


class TinyCNN(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> GAP -> linear, seeded; ``inplace`` picks the ReLU flavour."""

    def __init__(self, inplace: bool = False, classes: int = 5, seed: int = 0, act=nn.ReLU):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), act(inplace=inplace),
            nn.Conv2d(8, 6, 3, padding=1), act(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    return TinyCNN()


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


def model_snapshot(model: nn.Module) -> dict:
    """Everything a technique must leave as it found it: training flags, requires_grad, .grad,
    the state dict, the module tree and the hooks."""
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modules": [(n, type(m), id(m)) for n, m in model.named_modules()],
        "hooks": hook_count(model),
    }


#: Hyperparameters that fit the tiny test inputs and keep the suite fast; defaults otherwise.
TINY_PARAMS = {
    "occlusion": {"window": 3, "stride": 2},
    "integrated_gradients": {"n_steps": 8, "internal_batch_size": 3},
    "smoothgrad": {"n_samples": 4, "batch_size": 3},
    # images made by optimisation: a few steps, scales and shifts that fit 10x12 inputs
    "class_model": {"steps": 3, "snapshot_every": 2},
    "class_model_regularized": {"steps": 3, "snapshot_every": 2, "jitter": 2, "blur_every": 2},
    "inverted_representation": {"steps": 3, "snapshot_every": 2},
    "filter_visualization": {"steps": 3, "snapshot_every": 2, "jitter": 2, "blur_every": 2},
    "deep_dream": {"steps": 2, "snapshot_every": 2, "octaves": 2, "jitter": 2},
}


def any_model(name: str) -> bool:
    """Whether a technique runs on any classifier, TinyCNN included; the others declare the model
    family they need (``model_family``, e.g. the transformer techniques) and are tested on it."""
    from cnnviz import get_method

    return getattr(get_method(name), "model_family", None) is None


def tiny_method(name: str, **params):
    from cnnviz import get_method

    return get_method(name)(**{**TINY_PARAMS.get(name, {}), **params})


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``n`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread_children() -> Iterator[None]:
    """``OMP_NUM_THREADS=1`` for the ``run.py`` and script processes a module starts; the test
    process's own thread count is left alone (its OpenMP pool already exists).

    Why: the end-to-end runs here use small inputs, where a second intra-op thread buys little, and on
    a busy 2-core machine its spin-waiting costs a lot. Measured on one run.py call (11 images x 3
    techniques at 96 px, batch 4, under load): 29.3 s CPU / 81 s wall with two threads, 7.9 s CPU /
    25 s wall with one. The modules that use it assert nothing about thread counts; test_sweeps and
    test_trust_archive already run their children this way (``one_thread_everywhere``)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        yield
    finally:
        mp.undo()
