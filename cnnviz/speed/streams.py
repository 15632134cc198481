"""Independent batches of one technique, run as parallel streams on CPU where the model's preset asks.

Integrated gradients and SmoothGrad evaluate many batches that do not depend on each other (path
points, noisy copies). PyTorch spreads each operation over its intra-op threads, and some layers
spread badly: on a 2-core machine two threads make a VGG-19 forward + input gradient far less than
twice as fast as one. Two threads with one intra-op thread each, every one running its own batch,
keep both cores busy instead: faster on VGG-19, not on every network (slower on efficientnet_lite0).
One intra-op thread also rounds differently from two (the maps move slightly, as captum's do). Hence
a per-network setting, ``model.streams`` (``Speed(streams=n)``): 1 unless measured to pay, 2 in
``conf/model/vgg19.yaml``. The measurements: docs/performance.md.

The streams split the intra-op threads between them, and each batch holds half the technique's
batch size, so as many samples are in flight as with one stream. Results come back in order, so
sums over batches add up in the same order whatever the streams did. Used only where asked and safe:
on CPU, on the fast copy (``cnnviz.speed.fastpath``; with ``fast_copy=false`` the model as given may carry
state a second thread would see), for techniques whose passes touch no hook and no module state
(``Method.concurrent``, from the declared ``concurrent_safe``), and never from inside a stream. Anything else runs in the calling
thread as before.

The number of streams is a context variable (``using(n)``; the engine enters it from
``Speed(streams=n)``, the runner from ``model.streams``), 1 by default, and each batch a stream runs
sees the caller's context (the fast copy's switch included). Importing this module changes nothing
in the process; with ``Speed(reuse_memory=True)`` the engine also has the threads share malloc's
arenas (``memory.one_arena``), so that the streams' large activations come from the reused heap.
"""
from __future__ import annotations

import contextvars
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import torch
from torch import nn

from .fastpath import fast_model

T = TypeVar("T")
R = TypeVar("R")

_local = threading.local()
_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
#: streams asked for in this context (``model.streams``); 1 runs every batch in the calling thread
_wanted: contextvars.ContextVar[int] = contextvars.ContextVar("cnnviz_streams", default=1)


def check(n: object) -> int:
    """``n`` if it is a valid number of streams (a positive integer), else ``ValueError``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"streams must be a positive integer, got {n!r}")
    return n


@contextmanager
def using(n: int) -> Iterator[None]:
    """``n`` streams for the calls made inside the block, the previous setting after it."""
    token = _wanted.set(check(n))
    try:
        yield
    finally:
        _wanted.reset(token)


def stream_count(model: nn.Module, x: torch.Tensor) -> int:
    """How many streams the batches of ``model`` on ``x`` run in: the setting, at most one per
    intra-op thread, and 1 wherever streams would not be safe."""
    n = min(_wanted.get(), torch.get_num_threads())
    if n < 2 or x.device.type != "cpu" or getattr(_local, "worker", False):
        return 1
    net, _ = fast_model(model, x)  # also builds the copy here, before two threads could both build it
    return 1 if net is model else n


def per_stream(batch_size: int, streams: int) -> int:
    """Samples per batch when ``streams`` streams share ``batch_size`` samples in flight."""
    return max(1, -(-batch_size // streams))


def in_order(fn: Callable[[T], R], items: Iterable[T], streams: int) -> Iterator[R]:
    """``fn(item)`` for each item, in order. With ``streams`` > 1 the calls run on that many threads;
    ``items`` is still consumed in this thread, at most ``streams`` items ahead of the results."""
    if streams < 2:
        for item in items:
            yield fn(item)
        return
    pool = _pool(max(1, torch.get_num_threads() // streams), streams)
    pending: deque[Future] = deque()
    try:
        for item in items:
            # each call sees this thread's context (the fast copy's switch): threads do not inherit it
            pending.append(pool.submit(contextvars.copy_context().run, fn, item))
            if len(pending) >= streams:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # on an error or an abandoned generator: no stream keeps running on the model after we return
        for f in pending:
            f.cancel()
        wait(pending)


def _pool(threads: int, streams: int) -> ThreadPoolExecutor:
    with _lock:
        if (threads, streams) not in _pools:
            _pools[threads, streams] = _start(threads, streams)
        return _pools[threads, streams]


def _start(threads: int, streams: int) -> ThreadPoolExecutor:
    here = torch.get_num_threads()
    started = threading.Barrier(streams + 1)

    def init() -> None:
        _local.worker = True
        # a thread's first parallel op would reset its count from the process default: take that
        # first reset now, before setting ours (and before the caller restores the default)
        torch.get_num_threads()
        torch.set_num_threads(threads)
        started.wait(timeout=60)

    pool = ThreadPoolExecutor(streams, thread_name_prefix="cnnviz-stream", initializer=init)
    for _ in range(streams):
        pool.submit(int)  # each submit starts a thread while the others wait at the barrier
    started.wait(timeout=60)
    # set_num_threads in a stream also set the count that threads started later begin with
    torch.set_num_threads(here)
    return pool


def _forget_after_fork() -> None:
    # a forked child has none of the parent's threads
    global _lock
    _pools.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
