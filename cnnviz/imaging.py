"""Reading images from presets, files and folders, and turning them into model inputs."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile

from .errors import ConfigError, unknown

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def cache_dir() -> Path:
    return Path(os.environ.get("CNNVIZ_CACHE") or Path.home() / ".cache" / "cnnviz").expanduser()


def safe_name(name: str) -> str:
    """A file-name-safe stem: no separators, no leading dots, nothing that leaves a folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip("._")
    return cleaned[:120] or "image"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- reading ---------------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any Pillow mode: transparency is composited on white, 16/32-bit integer images are
    scaled from the 16-bit range and float images min-max scaled to 8 bit."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo or 1.0) * 255.0
        else:  # Pillow opens 16-bit files as I;16 or I: the range is 0..65535 whatever the content
            a = a / 65535.0 * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("P", "LA", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


_READ_CACHE: dict[tuple, tuple[Image.Image, str]] = {}
_READ_CACHE_SIZE = 32


def _cached(key: tuple, read: Callable[[], tuple[Image.Image, str]]) -> tuple[Image.Image, str]:
    """In-process cache of decoded images, so the jobs of a basic-launcher multirun read each once."""
    if key not in _READ_CACHE:
        if len(_READ_CACHE) >= _READ_CACHE_SIZE:
            _READ_CACHE.pop(next(iter(_READ_CACHE)))
        _READ_CACHE[key] = read()
    img, sha = _READ_CACHE[key]
    return img.copy(), sha


def read_image(path: str | os.PathLike, key: str = "image") -> tuple[Image.Image, str]:
    """Open, fully decode and convert an image file; returns the RGB image and the file's sha256."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: image file '{path}' does not exist")
    stat = path.stat()
    return _cached((str(path.resolve()), stat.st_mtime_ns, stat.st_size), lambda: _decode(path, key))


def _decode(path: Path, key: str) -> tuple[Image.Image, str]:
    data = path.read_bytes()
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as img:
            # Pillow only warns between one and two times its limit; refused here without touching the
            # warnings filters, which are process-wide (images are read on a worker thread)
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                raise Image.DecompressionBombError(f"{img.width}x{img.height} = {img.width * img.height} pixels")
            img.load()
            rgb = to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ConfigError(
            f"{key}: '{path}' is too large to decode safely ({e}). Pillow's decompression-bomb limit "
            f"is {Image.MAX_IMAGE_PIXELS} pixels; downscale the image first"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ConfigError(f"{key}: '{path}' is not a readable image ({type(e).__name__}: {e})") from None
    return rgb, sha256_bytes(data)


def read_skimage(name: str, key: str = "image") -> tuple[Image.Image, str]:
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if not callable(loader):
        raise ConfigError(f"{key}: scikit-image has no bundled image '{name}'")

    def read():
        array = np.ascontiguousarray(loader())
        return to_rgb(Image.fromarray(array)), sha256_bytes(array.tobytes())

    return _cached(("skimage", name), read)


def fetch_preset(name: str, url: str, sha256: str, key: str = "image") -> Path:
    """The cached file of a preset, downloaded when missing; a sha256 mismatch is refused and removed."""
    path = cache_dir() / "images" / f"{safe_name(name)}.png"
    if path.is_file():
        if sha256_bytes(path.read_bytes()) == sha256:
            return path
        path.unlink()
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            data = response.read()
    except Exception as e:
        raise ConfigError(
            f"{key}: preset '{name}' is not cached and could not be downloaded from {url} "
            f"({type(e).__name__}: {e}). Place the file at {path} (sha256 {sha256}), "
            f"or set CNNVIZ_CACHE to a folder holding images/{path.name}"
        ) from None
    if sha256_bytes(data) != sha256:
        raise ConfigError(
            f"{key}: download of preset '{name}' from {url} has sha256 {sha256_bytes(data)}, expected {sha256}; "
            f"refused and not kept. Place the correct file at {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class ImageSource:
    """One image of a run: a name for its files, how to read it, and its default target class."""

    name: str
    read: Callable[[], tuple[Image.Image, str]]
    default_target: Optional[int] = None
    origin: str = ""
    #: read while planning, so an unreadable file named in the config stops the run before work
    eager: bool = False
    #: the object as (x0, y0, x1, y1) in original-image pixels (``image.<key>.box``), for the pointing game
    box: Optional[tuple[float, float, float, float]] = None


def sources_from_config(key: str, cfg) -> list[ImageSource]:
    """Expand one ``image.<key>`` config into image sources (a folder gives one per file)."""
    where = f"image.{key}"
    kind = cfg.source
    if kind == "skimage":
        name = cfg.name or key
        import skimage.data

        if not callable(getattr(skimage.data, name, None)):
            raise ConfigError(f"{where}.name: scikit-image has no bundled image '{name}'")
        return [ImageSource(safe_name(key), lambda: read_skimage(name, where), cfg.target, f"skimage.data.{name}")]
    if kind == "preset":
        if not cfg.url or not cfg.sha256:
            raise ConfigError(f"{where}: a preset needs url and sha256")
        path = fetch_preset(key, cfg.url, cfg.sha256, where)
        return [ImageSource(safe_name(key), lambda: read_image(path, where), cfg.target, cfg.url)]
    if kind == "file":
        if not cfg.path:
            raise ConfigError(f"{where}.path is not set: use image=file {where}.path=/path/to/image.jpg")
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}.path: image file '{path}' does not exist")
        return [ImageSource(safe_name(cfg.name or path.stem), lambda: read_image(path, where), cfg.target, str(path), eager=True)]
    if kind == "folder":
        if not cfg.path:
            raise ConfigError(f"{where}.path is not set: use image=folder {where}.path=/path/to/folder")
        folder = Path(cfg.path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{where}.path: folder '{folder}' does not exist")
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"{where}.path: folder '{folder}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [
            ImageSource(safe_name(p.stem), (lambda p=p: read_image(p, where)), cfg.target, str(p)) for p in files
        ]
    raise ConfigError(f"{where}.source must be skimage, preset, file or folder, got '{kind}'")


def unique_names(sources: Sequence[ImageSource]) -> list[ImageSource]:
    """Rename duplicates (two folders with cat.png) so that no two images share output files."""
    taken = {s.name for s in sources}
    used: set[str] = set()
    out = []
    for s in sources:
        name, n = s.name, 1
        while name in used or (name != s.name and name in taken):
            n += 1
            name = f"{s.name}_{n}"
        used.add(name)
        out.append(s if name == s.name else dataclasses.replace(s, name=name))
    return out


# --- preprocessing ---------------------------------------------------------------------------


INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
RESIZE_MODES = ("center_crop", "stretch", "keep_aspect")


def check_preprocess(pre) -> None:
    """Raise ``ConfigError`` for preprocessing settings that ``preprocess`` cannot apply."""
    if pre.interpolation not in INTERPOLATIONS:
        raise unknown("interpolation", "model.preprocess.interpolation", pre.interpolation, INTERPOLATIONS)
    if pre.resize not in RESIZE_MODES:
        raise unknown("resize mode", "model.preprocess.resize", pre.resize, RESIZE_MODES)
    if int(pre.input_size) < 1 or not 0 < float(pre.crop_pct) <= 1:
        raise ConfigError("model.preprocess: input_size must be >= 1 and crop_pct in (0, 1]")
    if len(pre.mean) != 3 or len(pre.std) != 3 or any(float(v) == 0 for v in pre.std):
        raise ConfigError("model.preprocess: mean and std need 3 values each, std non-zero")


def preprocess(img: Image.Image, pre) -> tuple[torch.Tensor, np.ndarray]:
    """Resize (and crop) as configured; returns the normalised ``(1, 3, H, W)`` input and the
    uint8 ``(H, W, 3)`` picture it shows, which overlays are drawn on."""
    check_preprocess(pre)
    size = int(pre.input_size)
    interp = INTERPOLATIONS[pre.interpolation]
    w, h = img.size
    if pre.resize == "stretch":
        img = img.resize((size, size), interp)
    elif pre.resize in ("center_crop", "keep_aspect"):
        short = size if pre.resize == "keep_aspect" else int(round(size / float(pre.crop_pct)))
        scale = short / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), interp)
        if pre.resize == "center_crop":
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
    picture = np.asarray(img, dtype=np.uint8).copy()
    x = torch.from_numpy(picture).permute(2, 0, 1).float().div(255.0)
    mean = torch.tensor(list(pre.mean)).view(3, 1, 1)
    std = torch.tensor(list(pre.std)).view(3, 1, 1)
    return ((x - mean) / std)[None], picture


def box_to_input(box: Sequence[float], size: tuple[int, int], pre) -> tuple[float, float, float, float]:
    """Map ``box = (x0, y0, x1, y1)`` in the pixels of an original image of ``size = (w, h)`` to the
    model input that ``preprocess`` makes of it (same resize and crop), clipped to the input.

    Example: with a 224 px ``stretch``, ``box_to_input((100, 50, 300, 250), (400, 300), pre)`` is
    about ``(56, 37.3, 168, 186.7)``.
    """
    w, h = size
    sx, sy, left, top = resize_geometry(size, pre)
    if pre.resize == "keep_aspect":  # no crop: the input is the whole resized image
        out_w, out_h = max(1, round(w * sx)), max(1, round(h * sy))
    else:
        out_w = out_h = int(pre.input_size)
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(max(x0 * sx - left, 0.0), out_w), min(max(y0 * sy - top, 0.0), out_h),
            min(max(x1 * sx - left, 0.0), out_w), min(max(y1 * sy - top, 0.0), out_h))


def resize_geometry(size: tuple[int, int], pre) -> tuple[float, float, int, int]:
    """How ``preprocess`` maps an original image of ``size = (w, h)`` onto the model input:
    ``(sx, sy, left, top)`` with x_input = x_original · sx − left (pixel-edge coordinates)."""
    w, h = size
    size_in = int(pre.input_size)
    if pre.resize == "stretch":
        return size_in / w, size_in / h, 0, 0
    short = size_in if pre.resize == "keep_aspect" else int(round(size_in / float(pre.crop_pct)))
    scale = short / min(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if pre.resize == "center_crop":
        return new_w / w, new_h / h, (new_w - size_in) // 2, (new_h - size_in) // 2
    return new_w / w, new_h / h, 0, 0


def box_to_original(box: Sequence[float], size: tuple[int, int], pre) -> tuple[int, int, int, int]:
    """Map ``box = (x0, y0, x1, y1)`` in model-input pixels (pixel edges, as
    ``cnnviz.segmentation.bounding_box`` gives) back to the original image of ``size = (w, h)``,
    rounded outwards to whole pixels and clipped to the image.

    Example: a 224 px ``stretch`` of a 448 x 224 image doubles x: ``(10, 20, 30, 40)`` -> ``(20, 20, 60, 40)``.
    """
    import math

    w, h = size
    sx, sy, left, top = resize_geometry(size, pre)
    x0, y0, x1, y1 = (float(v) for v in box)
    # the 1e-9 keeps a product like 3.0000000001 from growing the box by a whole pixel
    return (min(max(math.floor((x0 + left) / sx + 1e-9), 0), w), min(max(math.floor((y0 + top) / sy + 1e-9), 0), h),
            min(max(math.ceil((x1 + left) / sx - 1e-9), 0), w), min(max(math.ceil((y1 + top) / sy - 1e-9), 0), h))
