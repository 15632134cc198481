"""Atomic file writing: every file appears whole or not at all (temporary file, then rename)."""
from __future__ import annotations

import hashlib
import io
import os
import secrets
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Optional

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
    # not mkstemp, whose files are 0600: with mode 0666 the process's umask gives the file the same
    # permissions as every other file the user creates (0644 under the usual umask)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
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


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a uint8 ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (others through Pillow).

    Every row gets the PNG "Sub" filter (each byte minus the same channel one pixel to the left),
    then a fast deflate (``deflate``): Pillow tries all five filters on every row, and Sub alone with
    ISA-L writes the gallery's maps several times faster and smaller (docs/performance.md).
    """
    a = np.asarray(image)
    channels = 1 if a.ndim == 2 else (a.shape[2] if a.ndim == 3 else 0)
    if a.dtype != np.uint8 or channels not in _PNG_COLOR_TYPE or 0 in a.shape:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    h, w = a.shape[:2]
    rows = np.ascontiguousarray(a).reshape(h, w * channels)
    raw = np.empty((h, w * channels + 1), np.uint8)
    raw[:, 0] = 1  # filter type Sub, modulo 256
    raw[:, 1:1 + channels] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=raw[:, 1 + channels:])
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPE[channels], 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", deflate(raw.tobytes())), _png_chunk(b"IEND", b"")])


#: Pixels of the PNGs this process wrote last, by path, with the file's (inode, mtime, size) then:
#: the gallery reads its thumbnails from here instead of decoding the files again.
_WRITTEN: "OrderedDict[str, tuple[tuple[int, int, int], np.ndarray]]" = OrderedDict()
_WRITTEN_LIMIT = 64 << 20
_written_bytes = 0
_WRITTEN_LOCK = threading.Lock()  # the runner writes items on several threads


def write_png(path: str | os.PathLike, image: np.ndarray) -> str:
    """``atomic_write`` of ``png_bytes(image)``; returns its sha256 and keeps the pixels for ``read_png``
    (the array itself: do not change it afterwards)."""
    global _written_bytes
    sha = atomic_write(path, png_bytes(image))
    st = os.stat(path)
    key = os.path.realpath(path)
    with _WRITTEN_LOCK:
        old = _WRITTEN.pop(key, None)
        _WRITTEN[key] = ((st.st_ino, st.st_mtime_ns, st.st_size), np.asarray(image))
        _written_bytes += _WRITTEN[key][1].nbytes - (old[1].nbytes if old else 0)
        while _written_bytes > _WRITTEN_LIMIT and len(_WRITTEN) > 1:
            _written_bytes -= _WRITTEN.popitem(last=False)[1][1].nbytes
    return sha


def read_png(path: str | os.PathLike) -> Optional[np.ndarray]:
    """The pixels of an image file (None if it is missing); a PNG this process wrote and nobody has
    replaced since comes from memory."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    with _WRITTEN_LOCK:
        known = _WRITTEN.get(os.path.realpath(path))
    if known is not None and known[0] == (st.st_ino, st.st_mtime_ns, st.st_size):
        return known[1]
    with Image.open(path) as im:
        return np.asarray(im)


def _zlib_rle(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)  # on filtered maps: faster and smaller than level 1
    return c.compress(data) + c.flush()


try:  # ISA-L deflate: several times zlib's speed on filtered maps, same format (docs/performance.md)
    from isal.isal_zlib import compress as _isal_compress

    def deflate(data: bytes) -> bytes:
        """A zlib stream of ``data`` (ISA-L level 1 where installed, else zlib run-length)."""
        return _isal_compress(data, 1)
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    deflate = _zlib_rle


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
