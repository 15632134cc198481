"""Atomic file writing: every file appears whole or not at all (temporary file, then rename)."""
from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def atomic_write(path: str | os.PathLike, data: bytes, durable: bool = False) -> str:
    """Write ``data`` to ``path`` atomically; returns its sha256.

    The rename makes the file whole or absent for any crash of the process. ``durable`` also syncs it
    to disk before the rename (against power loss): the manifest is; result files need not be,
    since a resumed run checks every listed file against its sha256 and recomputes a bad one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG of a uint8 ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (others through Pillow).

    Every row gets the PNG "Up" filter, then zlib at level 1. Pillow tries all five filters on every
    row; on attribution maps this is 2x faster at the same size within 10 % (Pillow at level 1: 7.4 vs
    3.4 ms for a 224 px colour map), and level 1 against the default 6 is 2.7x faster for 6 % more.
    """
    a = np.asarray(image)
    channels = 1 if a.ndim == 2 else (a.shape[2] if a.ndim == 3 else 0)
    if a.dtype != np.uint8 or channels not in _PNG_COLOR_TYPE or 0 in a.shape:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=compress_level)
        return buf.getvalue()
    h, w = a.shape[:2]
    rows = np.ascontiguousarray(a).reshape(h, w * channels)
    raw = np.empty((h, w * channels + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up: each byte minus the byte above it, modulo 256
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPE[channels], 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level)), _png_chunk(b"IEND", b"")])


_PNG_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # grey, RGB, RGBA


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gif_bytes(frames: np.ndarray, ms_per_frame: int = 120) -> bytes:
    """``(T, H, W[, 3])`` uint8 frames as a looping animated GIF; the last frame is held longer."""
    images = [Image.fromarray(f) for f in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 8]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buf.getvalue()


def csv_bytes(table: dict) -> bytes:
    """``{column: 1-D array}`` as CSV with a header row."""
    import pandas as pd

    return pd.DataFrame({k: np.asarray(v) for k, v in table.items()}).to_csv(index=False).encode()
