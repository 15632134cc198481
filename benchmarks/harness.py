"""The timing harness: one ``Row`` per timed item, ``Bench.measure`` (warm-up, repeats taking turns with
the model's floor, cold first runs) and ``Bench.rematch`` (side-by-side pairs for the slow items)."""
from __future__ import annotations

import copy
import gc
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from benchmarks.settings import COLD_S


@dataclass
class Row:
    model: str
    technique: str
    library: str
    group: str  # rows of one model with the same group are compared (cnnviz vs peers)
    ms: Optional[float] = None
    runs: int = 0
    cold: bool = False
    error: str = ""
    note: str = ""
    rss_mb: float = 0.0
    times: tuple = ()
    floor_times: tuple = ()  # the floor run right after each timed run (interleaved), when paired
    pair_ratios: tuple = ()  # cnnviz rows of slow items: this run / the best peer's run beside it (rematch)
    pair_peer: Optional[Row] = field(default=None, repr=False)  # that peer
    make: Optional[Callable] = field(default=None, repr=False)  # to time it again (rematch)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def fresh(model: nn.Module, relu_inplace_off: bool = False) -> nn.Module:
    """A private copy for one peer (its hooks and any rewrites stay on the copy)."""
    m = copy.deepcopy(model).eval()
    if relu_inplace_off:
        for mod in m.modules():
            if isinstance(mod, (nn.ReLU, nn.ReLU6)):
                mod.inplace = False
    return m


def submodule(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def as_array(out: Any) -> np.ndarray:
    if isinstance(out, (list, tuple)):
        out = out[0]
    if hasattr(out, "values") and not isinstance(out, torch.Tensor):  # a cnnviz Attribution
        out = out.values
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float64)


def first_line(e: BaseException, n: int = 70) -> str:
    msg = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {msg}"[:n]


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows: list[Row] = []
        self.outputs: dict[tuple[str, str], list] = {}  # (model, key) -> first [and last] result, for the agreement checks
        self.start = time.perf_counter()
        self.floors: dict[str, Callable[[], Callable[[], Any]]] = {}  # model -> its floor, for paired rows

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    def measure(self, model: str, technique: str, library: str, group: str, make: Callable[[], Callable[[], Any]],
                slow: bool = False, note: str = "", keep: Optional[str] = None) -> Row:
        """``make()`` (untimed: model copies, method objects) returns the function to time."""
        row = Row(model, technique, library, group, note=note, make=make)
        fn = None
        try:
            fn = make()
            t0 = time.perf_counter()
            out = fn()
            first = (time.perf_counter() - t0) * 1000.0
            first_out = out if keep else None
            times = []
            if first > COLD_S * 1000.0:
                times.append(first)
                row.cold = True
            n = 1 if slow else self.args.repeats
            # a fast row takes turns with its model's floor, so that both see the machine at the same speed
            floor = self.floors[model]() if not slow and group != "floor" and model in self.floors else None
            if floor is not None:
                floor()
            floor_times = []
            while len(times) < n:
                t0 = time.perf_counter()
                out = fn()
                times.append((time.perf_counter() - t0) * 1000.0)
                if floor is not None:
                    t0 = time.perf_counter()
                    floor()
                    floor_times.append((time.perf_counter() - t0) * 1000.0)
            row.ms, row.runs, row.times = statistics.median(times), len(times), tuple(times)
            row.floor_times = tuple(floor_times)
            if keep:  # the first and the last call's results (two noise draws for captum's NoiseTunnel)
                self.outputs[(model, keep)] = [first_out] + ([out] if out is not first_out else [])
            out = first_out = None
        except Exception as e:  # a peer (or cnnviz) failing is a table entry, not a crash
            row.error = "error: " + first_line(e)
        finally:
            fn = None
            gc.collect()
        row.rss_mb = peak_rss_mb()
        self.rows.append(row)
        shown = f"{row.ms:.1f} ms" if row.ms is not None else row.error
        self.log(f"{model:<18} {technique:<34} {library:<16} {shown}")
        return row

    def rematch(self, model: str, group: str) -> None:
        """Slow items run once each, at different moments; then cnnviz and the fastest peer of the group
        run again ``--slow-repeats`` times as adjacent pairs, the order swapped every round (cnnviz first,
        then the peer first, ...). Each pair gives one ratio measured at one speed of the machine."""
        ours = next((r for r in self.rows if r.model == model and r.group == group and r.library == "cnnviz"
                     and r.ms is not None), None)
        peer = best_peer(self.rows, ours) if ours else None
        if peer is None:
            return
        for i in range(self.args.slow_repeats):
            pair = {}
            for row in (ours, peer) if i % 2 == 0 else (peer, ours):
                fn = row.make()
                t0 = time.perf_counter()
                fn()
                pair[row.library] = (time.perf_counter() - t0) * 1000.0
                row.times = row.times + (pair[row.library],)
                fn = None
                gc.collect()
                row.ms, row.runs = statistics.median(row.times), len(row.times)
                self.log(f"{model:<18} {row.technique:<34} {row.library:<16} again: {row.times[-1]:.1f} ms")
            ours.pair_ratios, ours.pair_peer = ours.pair_ratios + (pair[ours.library] / pair[peer.library],), peer


def best_peer(rows: list[Row], row: Row) -> Optional[Row]:
    peers = [r for r in rows if r.model == row.model and r.group == row.group and r.library != "cnnviz"
             and r.library != "torch" and r.ms is not None]
    return min(peers, key=lambda r: r.ms) if peers else None
