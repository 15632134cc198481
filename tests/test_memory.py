"""malloc keeps freed memory for the next batch inside ``reusing_freed_memory``, and only there."""
from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from cnnviz.speed import memory
from cnnviz.methods import base
from cnnviz.methods import get_method

from conftest import TinyCNN


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mmapped_bytes() -> int:
    info = memory._libc.mallinfo2
    info.restype = _MallInfo2
    return info().hblkhd


needs_glibc = pytest.mark.skipif(not memory.available() or not hasattr(memory._libc, "mallinfo2"),
                                 reason="glibc >= 2.33 only")

SIZE = 64 << 20  # above glibc's largest mmap threshold (32 MB): always mmap'ed by default


def _grows_mmap() -> bool:
    before = _mmapped_bytes()
    block = np.ones(SIZE, dtype=np.uint8)
    grew = _mmapped_bytes() - before >= SIZE
    del block
    return grew


@needs_glibc
def test_large_blocks_come_from_the_heap_inside_and_from_mmap_again_after():
    assert _grows_mmap()
    with memory.reusing_freed_memory():
        assert not _grows_mmap()
        with memory.reusing_freed_memory():
            assert not _grows_mmap()
        assert not _grows_mmap()  # the inner block's exit leaves the outer one's setting
    assert _grows_mmap()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_glibc
def test_freed_heap_memory_is_kept_inside_and_returned_on_exit():
    with memory.reusing_freed_memory():
        block = np.ones(SIZE, dtype=np.uint8)  # touched: resident
        del block
        kept = _resident_bytes()
        again = np.ones(SIZE, dtype=np.uint8)
        assert _resident_bytes() - kept < SIZE // 4  # the freed pages serve it
        del again
    assert kept - _resident_bytes() > SIZE * 3 // 4  # trimmed on exit


@pytest.mark.parametrize("name, many", [("integrated_gradients", True), ("smoothgrad", True), ("occlusion", True),
                                        ("scorecam", True), ("gradcam", False), ("vanilla_backprop", False)])
def test_batched_techniques_run_inside_the_block(monkeypatch, name, many):
    entered = []

    @contextmanager
    def recording():
        entered.append(name)
        yield

    monkeypatch.setattr(memory, "reusing_freed_memory", recording)
    cls = get_method(name)
    assert cls.many_passes is many
    method = cls(**({"n_samples": 2, "batch_size": 2} if name == "smoothgrad" else {"n_steps": 2} if name == "integrated_gradients" else {}))
    call = lambda: method(TinyCNN().eval(), torch.rand(1, 3, 16, 16), 0, layer="features.2" if method.needs_layer else None)  # noqa: E731
    call()
    assert not entered  # not asked: malloc left alone (the library API's default)
    with memory.using(True):
        call()
    assert bool(entered) is many


@needs_glibc
def test_settle_fixes_the_thresholds_where_a_block_leaves_them():
    memory.settle()
    before = _mmapped_bytes()
    block = np.ones(16 << 20, dtype=np.uint8)  # under the 32 MB threshold: from the heap
    assert _mmapped_bytes() - before < 16 << 20
    del block
    assert _grows_mmap()  # 64 MB: over it


THREAD_CHECK = """
import threading, numpy as np
from test_memory import _mmapped_bytes
from cnnviz.speed import memory
{setup}
grew = []
def allocate():
    with memory.reusing_freed_memory():
        for _ in range(2):
            before = _mmapped_bytes()
            block = np.ones(96 << 20, dtype=np.uint8)
            grew.append(_mmapped_bytes() - before >= 96 << 20)
            del block
t = threading.Thread(target=allocate)
t.start()
t.join()
print(grew)
"""


def _thread_grew(setup: str) -> str:
    """In a fresh process (``one_arena`` is for good): whether a thread's 96 MB blocks were mmap'ed."""
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    out = subprocess.run([sys.executable, "-c", THREAD_CHECK.format(setup=setup)], env=env, cwd=here,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@needs_glibc
def test_a_thread_started_after_one_arena_takes_blocks_above_64_mb_from_the_heap_inside():
    """An arena of the thread's own grows in heaps of at most 64 MB, so a larger block would be
    mmap'ed (and faulted in) on every batch; ``one_arena`` (asked for with ``Speed(reuse_memory=True)``)
    has later threads share malloc's arenas. Importing the streams alone sets nothing."""
    assert _thread_grew("memory.one_arena()") == "[False, False]"
    assert _thread_grew("import cnnviz.speed.streams") == "[True, True]"


def test_the_engine_asks_for_reuse_only_when_told():
    from cnnviz.engine import compute
    from cnnviz.speed import Speed

    entered = []
    method = get_method("occlusion")()
    real = memory.reusing_freed_memory

    @contextmanager
    def recording():
        entered.append(1)
        with real():
            yield

    x = torch.rand(1, 3, 16, 16)
    try:
        memory.reusing_freed_memory = recording
        compute(method, TinyCNN().eval(), x, 0, [], Speed())
        assert not entered
        compute(method, TinyCNN().eval(), x, 0, [], Speed(reuse_memory=True))
        assert entered
    finally:
        memory.reusing_freed_memory = real
