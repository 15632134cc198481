"""Opt-in accelerations: the BatchNorm-folded channels-last fast copy of a model (``fastpath``), two
parallel CPU streams for batched gradient techniques (``streams``), and malloc reuse between batches
(``memory``). These modules may import the core only.

Each computes the same function and is off in the library API; a ``Speed`` names the ones a call
wants, and ``applied(speed)`` switches them on for the calls made inside it (context variables, so
they apply to this call and the streams it starts, and to nothing else). The runner builds its
``Speed`` from the configuration (``fast_copy``, ``model.streams``, ``reuse_memory``), on where they
were measured to pay (docs/performance.md). Importing these modules changes nothing in the process.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Speed:
    """Which accelerations a call uses; everything off by default.

    ``fast_copy``: run the model's BatchNorm-folded channels-last copy (``fastpath``; rounds
    differently from the model as given). ``streams``: parallel CPU streams for integrated gradients /
    SmoothGrad (``streams``; used only on the fast copy). ``reuse_memory``: techniques that run many
    batches keep freed memory in malloc's heap between them (``memory``; process-wide malloc settings
    while such a call runs, and threads started after it share malloc's arenas for good)."""

    fast_copy: bool = False
    streams: int = 1
    reuse_memory: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.streams, bool) or not isinstance(self.streams, int) or self.streams < 1:
            raise ValueError(f"streams must be a positive integer, got {self.streams!r}")


@contextmanager
def applied(speed: Speed) -> Iterator[None]:
    """The calls made inside the block (and the streams they start) use ``speed``'s accelerations."""
    from . import fastpath, memory, streams  # torch only when work starts

    with fastpath.using(speed.fast_copy), streams.using(speed.streams), memory.using(speed.reuse_memory):
        if speed.reuse_memory:
            memory.one_arena()  # asked for: threads started from now on share malloc's arenas
        yield


__all__ = ["Speed", "applied"]
