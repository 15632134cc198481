"""Independent batches of one technique, run as parallel streams on CPU where the model's preset asks.

Integrated gradients and SmoothGrad evaluate many batches that do not depend on each other (path
points, noisy copies). PyTorch spreads each operation over its intra-op threads, and some layers
spread badly: on this project's 2-core machine two threads make a VGG-19 forward + input gradient
only 1.67x faster than one (the 3-channel first convolution 1.7x, the 14x14 layers 1.4x). Two
threads with one intra-op thread each, every one running its own batch, keep both cores busy
instead. VGG-19, 50 steps or samples, 10 in flight, two runs each: integrated gradients 18.2 / 17.7 s
against 22.1 / 20.2 s in one stream, SmoothGrad 16.9 / 19.0 s against 22.4 / 18.4 s. Not on every
network: on efficientnet_lite0, three runs each, IG took 2.00 / 1.84 / 1.80 s against 2.14 / 1.85 /
1.85 s, SmoothGrad 2.00 / 1.92 / 1.90 s against 1.75 / 1.82 / 1.66 s (slower). One intra-op thread
also rounds differently from two: the maps move by up to 4e-6 of their maximum on VGG-19 and 3.9e-4
on efficientnet_lite0 (captum itself moves as much from two threads to one). Hence a per-network
setting, ``model.streams`` (``set_streams``): 1 unless measured to pay, 2 in ``conf/model/vgg19.yaml``.

The streams split the intra-op threads between them, and each batch holds half the technique's
batch size, so as many samples are in flight as with one stream. Results come back in order, so
sums over batches add up in the same order whatever the streams did. Used only where asked and safe:
on CPU, on the fast copy (``cnnviz.speed.fastpath``; with ``fast_copy=false`` the model as given may carry
state a second thread would see), for techniques whose passes touch no hook and no module state
(``GradientMethod.concurrent``), and never from inside a stream. Anything else runs in the calling
thread as before.

Importing this module has threads started later take their memory from the arenas malloc already
has (``memory.one_arena``): an arena of their own could not hold a block above 64 MB, and would map
and fault in every large activation again (VGG-19, batch 5: 64.2 MB).
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import torch
from torch import nn

from ..speed import memory
from .fastpath import fast_model

memory.one_arena()  # before PyTorch's threads and ours start: see memory.one_arena

T = TypeVar("T")
R = TypeVar("R")

_local = threading.local()
_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_wanted = 1  # the run's model.streams


def set_streams(n: int) -> None:
    """Streams asked for from now on (``model.streams``); 1 runs every batch in the calling thread."""
    global _wanted
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"streams must be a positive integer, got {n!r}")
    _wanted = n


@contextmanager
def using(n: int) -> Iterator[None]:
    """``set_streams(n)`` inside the block, the previous setting after it."""
    previous = _wanted
    set_streams(n)
    try:
        yield
    finally:
        set_streams(previous)


def stream_count(model: nn.Module, x: torch.Tensor) -> int:
    """How many streams the batches of ``model`` on ``x`` run in: the setting, at most one per
    intra-op thread, and 1 wherever streams would not be safe."""
    n = min(_wanted, torch.get_num_threads())
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
            pending.append(pool.submit(fn, item))
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
