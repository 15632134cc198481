"""Freed memory reused from one batch to the next, inside a technique that runs many batches.

PyTorch takes CPU tensors from ``malloc``. glibc serves every request above its mmap threshold (at
most 32 MB) with a fresh ``mmap`` and returns it with ``munmap`` when the tensor is freed, so each
batch of a perturbation or path method pays a page fault (and the kernel's zeroing) on every 4 KiB of
every large activation again: hundreds of thousands of faults per VGG-19 forward + backward at batch
10, a noticeable share of the time on virtual CPUs (docs/performance.md).

``reusing_freed_memory()`` lets malloc serve every size from its heap and keep what is freed there,
so the next batch finds its memory already mapped — what PyTorch's caching allocator does on a GPU.
On exit the heap is trimmed, so the process does not keep the technique's peak memory, and malloc is
left ``settle()``d: any ``mallopt`` call ends glibc's dynamic thresholds for good, so they are fixed
where the dynamic ones end up in a PyTorch process once its large tensors are freed (mmap above
32 MB, trim above 64 MB: glibc's maxima). Call ``settle()`` first when code timed before and after a
block should run under the same malloc settings (``benchmarks/`` does, for the peers). Elsewhere
than glibc all this does nothing. Blocks may nest; threads share the one setting (malloc's options
are process-wide).

A thread malloc has not seen before gets an arena of its own, and such an arena grows in heaps of
at most 64 MB: a larger block comes from ``mmap`` whatever the settings above, and is faulted in
again on every batch. ``one_arena()`` has threads started from then on share the arenas that
exist — for good: glibc fixes the limit when the next thread starts, as ``MALLOC_ARENA_MAX=1`` in
the environment would.

Nothing here runs unless asked: importing changes no malloc setting, and the techniques reuse freed
memory only inside ``using(True)`` (``reusing_when_asked``), which the engine enters from
``Speed(reuse_memory=True)`` and the runner from ``reuse_memory: true``; the same scope, in the
engine, calls ``one_arena()``. Measured benefits: docs/performance.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Iterator, Optional

# mallopt parameters (malloc.h); glibc's default mmap count, and its dynamic thresholds' maxima on 64 bits
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
_MMAP_MAX, _MMAP_THRESHOLD, _TRIM_THRESHOLD = 65536, 32 << 20, 64 << 20
_NEVER = 2**31 - 1  # mallopt takes an int

_lock = threading.Lock()
_depth = 0
#: whether the techniques called in this context reuse freed memory; off by default (the library API)
_asked: ContextVar[bool] = ContextVar("cnnviz_reuse_memory", default=False)


def _load_glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl, macOS do not)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


_libc = _load_glibc()


def available() -> bool:
    return _libc is not None


def settle() -> None:
    """Fix malloc's thresholds at the values a block leaves behind (see the module's docstring)."""
    if _libc is not None:
        with _lock:
            if _depth == 0:
                _settle()


def _settle() -> None:
    _libc.mallopt(_M_MMAP_MAX, _MMAP_MAX)
    _libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    _libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def one_arena() -> None:
    """Threads started from now on allocate from the arenas malloc already has (see above)."""
    if _libc is not None:
        _libc.mallopt(_M_ARENA_MAX, 1)


@contextmanager
def reusing_freed_memory() -> Iterator[None]:
    global _depth
    if _libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _libc.mallopt(_M_MMAP_MAX, 0)
            _libc.mallopt(_M_TRIM_THRESHOLD, _NEVER)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _settle()
                _libc.malloc_trim(0)


@contextmanager
def using(flag: bool) -> Iterator[None]:
    """Techniques called inside the block reuse freed memory between their batches (``True``) or not."""
    token = _asked.set(bool(flag))
    try:
        yield
    finally:
        _asked.reset(token)


def reusing_when_asked():
    """``reusing_freed_memory()`` inside ``using(True)``, else a block that changes nothing."""
    return reusing_freed_memory() if _asked.get() else nullcontext()
