"""A library that behaves like a guest: importing cnnviz and calling a technique or ``explain`` leave
the host process as they found it — no ``mallopt`` (malloc settings), no thread counts, no global
flags of torch, no warnings filters, no logging configuration, no Hydra. Checked in a fresh process
(a process that ran other tests has already been changed by them). torch and torchvision are imported
before the first look: what their own imports change is theirs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SCRIPT = r'''
import json, logging, os, sys, threading, warnings
import torch
import torchvision  # noqa: F401  its own import changes the process (torch._dynamo: a warnings filter, an env var)
from conftest import TinyCNN  # building a model draws from torch's global generator: before the snapshot

import cnnviz.speed.memory as memory  # loading libc calls nothing; every call through it is recorded from here on


class Recording:
    """libc as cnnviz.speed.memory sees it, recording the calls that change malloc's settings."""

    def __init__(self, libc):
        self.libc, self.calls = libc, []

    def __getattr__(self, name):
        attr = getattr(self.libc, name)
        if name in ("mallopt", "malloc_trim"):
            def record(*args):
                self.calls.append([name, *args])
                return attr(*args)
            return record
        return attr


libc = Recording(memory._libc) if memory._libc is not None else None
memory._libc = libc


def state():
    b = torch.backends
    log = logging.getLogger("cnnviz")
    return {
        "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(), "grad": torch.is_grad_enabled(),
        "dtype": str(torch.get_default_dtype()), "matmul": torch.get_float32_matmul_precision(),
        "rng": torch.get_rng_state().tolist(), "flush_denormal": None,
        "cudnn": [b.cudnn.enabled, b.cudnn.benchmark, b.cudnn.deterministic, b.cudnn.allow_tf32],
        "mkldnn": b.mkldnn.enabled, "tf32": b.cuda.matmul.allow_tf32,
        "warnings": [repr(f) for f in warnings.filters],
        "root": [logging.root.level, [repr(h) for h in logging.root.handlers], logging.root.manager.disable],
        "cnnviz_log": [log.level, [repr(h) for h in log.handlers], log.propagate],
        "live_threads": threading.active_count(), "environ": dict(os.environ),
    }


model, x = TinyCNN().eval(), torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
before = state()
import cnnviz  # noqa: E402
from cnnviz import explain, get_method, list_methods  # noqa: E402
import cnnviz.speed.streams, cnnviz.speed.fastpath, cnnviz.engine, cnnviz.metrics, cnnviz.output.render  # noqa: E401,E402
names = list_methods()
get_method("integrated_gradients")(n_steps=4)(model, x, 1)  # many batches: malloc reuse, streams
get_method("occlusion")()(model, x, 1)
get_method("gradcam")()(model, x, 1, layer="features.2")
ex = explain(model, x, method="smoothgrad", n_samples=2, batch_size=2)
ex = explain(model, x, method="gradcam", layer="features.2", fast_copy=True)
after = state()
changed = sorted(k for k in before if before[k] != after[k])
print(json.dumps({
    "mallopt": libc.calls if libc is not None else None,
    "changed": {k: [str(before[k])[:300], str(after[k])[:300]] for k in changed},
    "hydra": sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf")),
    "fast_copy_after": cnnviz.speed.fastpath.enabled(),
    "names": len(names),
}))
'''


def run_guest() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=TESTS, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_and_calling_cnnviz_leaves_the_process_as_it_was():
    seen = run_guest()
    assert seen["mallopt"] in ([], None), f"malloc settings changed: {seen['mallopt']}"
    assert seen["changed"] == {}, f"process state changed: {seen['changed']}"
    assert seen["hydra"] == [], f"the library imported {seen['hydra']}"
    assert seen["fast_copy_after"] is False  # explain(fast_copy=True) applied it to its own call only
    assert seen["names"] > 20


@pytest.fixture(scope="module")
def home_seen_by_a_module_fixture():
    return os.environ.get("CNNVIZ_HOME")


def test_module_fixtures_already_see_the_private_cache(home_seen_by_a_module_fixture, image_cache):
    """A module-scoped fixture that trains or caches (the benchmark CNN) writes into the session's cache, not
    the user's ~/.cache: the cache variable is set before any fixture of a narrower scope runs."""
    assert home_seen_by_a_module_fixture == str(image_cache)
