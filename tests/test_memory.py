"""malloc keeps freed memory for the next batch inside ``reusing_freed_memory``, and only there."""
from __future__ import annotations

import ctypes
import importlib
import os
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from cnnviz.speed import memory
from cnnviz.methods import base
from cnnviz.core.registry import get_method

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

    monkeypatch.setattr(base, "reusing_freed_memory", recording)
    cls = get_method(name)
    assert cls.many_passes is many
    method = cls(**({"n_samples": 2, "batch_size": 2} if name == "smoothgrad" else {"n_steps": 2} if name == "integrated_gradients" else {}))
    method(TinyCNN().eval(), torch.rand(1, 3, 16, 16), 0, layer="features.2" if method.needs_layer else None)
    assert bool(entered) is many


@needs_glibc
def test_settle_fixes_the_thresholds_where_a_block_leaves_them():
    memory.settle()
    before = _mmapped_bytes()
    block = np.ones(16 << 20, dtype=np.uint8)  # under the 32 MB threshold: from the heap
    assert _mmapped_bytes() - before < 16 << 20
    del block
    assert _grows_mmap()  # 64 MB: over it


@needs_glibc
def test_a_thread_started_after_import_takes_blocks_above_64_mb_from_the_heap_inside():
    """``cnnviz.speed.streams`` has later threads share malloc's arenas: an arena of the thread's own grows in
    heaps of at most 64 MB, so a larger block would be mmap'ed (and faulted in) on every batch."""
    importlib.import_module("cnnviz.speed.streams")  # what sets it (imported with cnnviz anyway)

    size = 96 << 20
    grew = []

    def allocate():
        with memory.reusing_freed_memory():
            for _ in range(2):
                before = _mmapped_bytes()
                block = np.ones(size, dtype=np.uint8)
                grew.append(_mmapped_bytes() - before >= size)
                del block

    t = threading.Thread(target=allocate)
    t.start()
    t.join()
    assert grew == [False, False]
