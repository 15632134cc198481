"""Reduced-precision forward passes (``precision=bf16|fp16``) and host-to-device copies.

``precision_scope`` runs the block under ``torch.autocast`` at the given precision: matrix products
and convolutions in bfloat16 / float16, reductions and the results cnnviz keeps in float32
(``core.maps.result_dtype``). fp32 is no autocast at all, the default and the reference; bf16 and
fp16 trade the maps' last digits for speed on GPUs with tensor cores (and bf16 on CPUs with AMX or
AVX-512 BF16). Autocast is a per-thread setting in PyTorch: work a technique hands to its own
threads (``model.streams``) runs in float32.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def precision_scope(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Forward passes inside the block at ``precision`` (fp32: unchanged)."""
    if precision == "fp32":
        yield
        return
    if precision not in DTYPES:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    with torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision]):
        yield


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; to a GPU from pinned memory without blocking, so that the copy overlaps
    the host's next work (the stream orders it before any kernel that reads it)."""
    device = torch.device(device)
    if device.type != "cuda" or x.device == device:
        return x.to(device)
    return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)


__all__ = ["precision_scope", "to_device"]
