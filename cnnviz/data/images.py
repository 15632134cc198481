"""Reading images from presets, files and folders, and turning them into model inputs."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from ..core.errors import ConfigError, unknown

log = logging.getLogger("cnnviz")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def cache_dir() -> Path:
    # CNNVIZ_CACHE: the variable's name before CNNVIZ_HOME, still honoured
    return Path(os.environ.get("CNNVIZ_HOME") or os.environ.get("CNNVIZ_CACHE") or Path.home() / ".cache" / "cnnviz").expanduser()


def safe_name(name: str) -> str:
    """A file-name-safe stem: no separators, no leading dots, nothing that leaves a folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip("._")
    return cleaned[:120] or "image"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- reading ---------------------------------------------------------------------------------


#: EXIF orientations (tag 274) that need the pixels turned or flipped; 1 is upright, anything else is
#: not a valid value and is left alone
_TURNED = range(2, 9)


def to_rgb(img: Image.Image, key: str = "image", name: str = "the image") -> Image.Image:
    """Upright RGB from any Pillow mode, the one path every image takes into a model input.

    The EXIF orientation (JPEG, TIFF, WebP, PNG) is applied first, as a viewer does: a phone stores a
    portrait photo sideways with a tag saying so. Transparency is composited on white, 16/32-bit
    integer images are scaled from the 16-bit range and float images min-max scaled to 8 bit; a float
    image holding NaN or Inf is refused (``ConfigError`` naming ``key`` and ``name``), since scaling
    would turn it into an arbitrary picture. Of a multi-frame image (animated GIF/PNG/WebP, multi-page
    TIFF) the current frame is used, and a note saying so is logged and kept in the result's
    ``info["cnnviz_warnings"]`` (a list of strings) for the manifest.
    """
    note = _frames_note(img, name)
    if _orientation(img) in _TURNED:
        img = ImageOps.exif_transpose(img)
    rgb = _to_rgb(img, key, name)
    if note:
        log.warning("%s", note)
        rgb.info["cnnviz_warnings"] = [*rgb.info.get("cnnviz_warnings", ()), note]
    return rgb


def _orientation(img: Image.Image) -> object:
    # Pillow reads a damaged EXIF block as far as it can (with its own warning) rather than raising
    return img.getexif().get(0x0112, 1)


def _frames_note(img: Image.Image, name: str) -> Optional[str]:
    frames = getattr(img, "n_frames", 1)
    # an MPO (a phone's or stereo camera's JPEG) holds the photo first and previews, depth maps or the
    # other eye after it: the first frame is the picture, nothing to report
    if not isinstance(frames, int) or frames <= 1 or img.format == "MPO":
        return None
    current = img.tell()
    which = "the first" if current == 0 else f"frame {current + 1}"
    return f"{name} has {frames} frames (animated or multi-page); only {which} is used"


def _to_rgb(img: Image.Image, key: str, name: str) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            bad = int(np.count_nonzero(~np.isfinite(a)))
            if bad:
                raise ConfigError(
                    f"{key}: {name} contains NaN/Inf values ({bad} of {a.size} pixels); a float image must "
                    f"be finite to be scaled to 8 bit: replace them (e.g. numpy.nan_to_num) or use another file"
                )
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
    out = img.copy()
    if "cnnviz_warnings" in out.info:  # Image.copy copies info shallowly: a caller's append must not reach the cache
        out.info["cnnviz_warnings"] = list(out.info["cnnviz_warnings"])
    return out, sha


def read_image(path: str | os.PathLike, key: str = "image") -> tuple[Image.Image, str]:
    """Open, fully decode and convert an image file; returns the RGB image and the file's sha256."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(_not_a_file(key, path))
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
            rgb = to_rgb(img, key, f"'{path}'")
    except ConfigError:
        raise
    except Image.DecompressionBombError as e:
        raise ConfigError(
            f"{key}: '{path}' is too large to decode safely ({e}). Pillow's decompression-bomb limit "
            f"is {Image.MAX_IMAGE_PIXELS} pixels; downscale the image first"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ConfigError(f"{key}: '{path}' is not a readable image ({type(e).__name__}: {e})") from None
    return rgb, sha256_bytes(data)


def _not_a_file(key: str, path: Path) -> str:
    """The message for an image path that is not a file: it says what the path is instead."""
    if path.is_dir():
        return f"{key}: '{path}' is a folder, not an image file"
    if path.exists():
        return f"{key}: '{path}' is not a regular file (a device, pipe or socket)"
    return f"{key}: image file '{path}' does not exist"


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
    """The cached file of a preset, downloaded when missing.

    A cached copy whose sha256 does not match is moved aside to ``<name>.png.bad-<first 8 hex of its
    sha256>`` beside it, never deleted (it may be a file the user placed there by hand), and the
    preset is downloaded again; every message from then on says where the bad copy went.
    """
    path = cache_dir() / "images" / f"{safe_name(name)}.png"
    moved = ""
    if path.is_file():
        actual = sha256_bytes(path.read_bytes())
        if actual == sha256:
            return path
        mismatch = f"the cached copy at {path} did not match its sha256 (expected {sha256}, got {actual})"
        aside = path.with_name(f"{path.name}.bad-{actual[:8]}")
        try:
            os.replace(path, aside)
        except OSError as e:
            raise ConfigError(
                f"{key}: preset '{name}': {mismatch} and could not be moved aside to {aside} "
                f"({type(e).__name__}: {e}); replace it with the right file (sha256 {sha256})"
            ) from None
        moved = f"{mismatch[0].upper()}{mismatch[1:]} and was moved aside to {aside}. "
        log.warning("%s: preset '%s': %s; moved aside to %s, downloading it again", key, name, mismatch, aside)
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            data = response.read()
    except Exception as e:
        raise ConfigError(
            f"{key}: preset '{name}' is not cached and could not be downloaded from {url} "
            f"({type(e).__name__}: {e}). {moved}Place the file at {path} (sha256 {sha256}), "
            f"or set CNNVIZ_HOME to a folder holding images/{path.name}"
        ) from None
    if sha256_bytes(data) != sha256:
        raise ConfigError(
            f"{key}: download of preset '{name}' from {url} has sha256 {sha256_bytes(data)}, expected {sha256}; "
            f"refused and not kept. {moved}Place the correct file at {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class ImageSource:
    """One image of a run: a name for its files, how to read it, and its default target class
    (its label: an index, or a class name until ``lists.resolve_labels`` maps it)."""

    name: str
    read: Callable[[], tuple[Image.Image, str]]
    default_target: Optional[int | str] = None
    origin: str = ""
    #: read while planning, so an unreadable file named in the config stops the run before work
    eager: bool = False
    #: the object as (x0, y0, x1, y1) in original-image pixels (``image.<key>.box``), for the pointing game
    box: Optional[tuple[float, float, float, float]] = None
    #: the object's exact pixels: reads a boolean ``(h, w)`` mask of the original image (a list's ``mask``
    #: column, the benchmark's planted object), for relevance mass / rank and the pointing game; it wins
    #: over ``box`` where both are given
    mask: Optional[Callable[[], np.ndarray]] = None


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
        if path.is_dir():
            use = f"image=folder image.folder.path={path}" if key == "file" else f"{where}.source=folder"
            raise ConfigError(f"{where}.path: '{path}' is a folder, not an image file; for every image in it use {use}")
        if not path.is_file():
            raise ConfigError(_not_a_file(f"{where}.path", path))
        return [ImageSource(safe_name(cfg.name or path.stem), lambda: read_image(path, where), cfg.target, str(path), eager=True)]
    if kind == "folder":
        if not cfg.path:
            raise ConfigError(f"{where}.path is not set: use image=folder {where}.path=/path/to/folder")
        folder = Path(cfg.path).expanduser()
        if folder.is_file():
            use = f"image=file image.file.path={folder}" if key == "folder" else f"{where}.source=file"
            raise ConfigError(f"{where}.path: '{folder}' is a file, not a folder; for this one image use {use}")
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"{where}.path: folder '{folder}' {what}")
        from .lists import folder_sources

        return folder_sources(where, folder, cfg)
    if kind == "list":
        from .lists import list_sources

        return list_sources(where, cfg)
    if kind == "benchmark":  # generated by cnnviz.benchmark, which data does not import: the planner asks it
        raise ConfigError(f"{where}.source=benchmark: the benchmark's images come with a run (image=benchmark)")
    raise ConfigError(f"{where}.source must be skimage, preset, file, folder, list or benchmark, got '{kind}'")


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

#: The most pixels ``preprocess`` resizes an image to: the resize before center_crop's crop, and the
#: model input (keep_aspect's whole resized image, stretch's square). Pillow's decompression-bomb limit
#: bounds only the decoded file, but these modes scale the *short* side to about input_size, so a
#: thin sliver (2 x 20000 px, a small file) would grow to 256 x 2560000 pixels, GBs of memory.
#: 4096² pixels are 48 MiB as 8-bit RGB and 192 MiB as the float32 input: far above any ordinary photo
#: (a 224 px model reaches it only at an aspect ratio beyond 250:1) and far below what exhausts a machine.
MAX_RESIZED_PIXELS = 4096 * 4096


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


def _resized_size(size: tuple[int, int], pre) -> tuple[int, int]:
    """The ``(w, h)`` that ``preprocess`` resizes an image of ``size`` to, before any crop."""
    w, h = size
    size_in = int(pre.input_size)
    if pre.resize == "stretch":
        return size_in, size_in
    short = size_in if pre.resize == "keep_aspect" else int(round(size_in / float(pre.crop_pct)))
    scale = short / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def check_resized_size(size: tuple[int, int], pre) -> None:
    """Raise ``ConfigError`` when ``preprocess`` would resize an image of ``size = (w, h)`` to more than
    ``MAX_RESIZED_PIXELS``, from the geometry alone, before any memory is spent on it. The crop of
    center_crop only shrinks, so the resize is the largest image of every mode."""
    new_w, new_h = _resized_size(size, pre)
    pixels = new_w * new_h
    if pixels <= MAX_RESIZED_PIXELS:
        return
    w, h = size
    if pre.resize == "stretch":
        fix = "lower model.preprocess.input_size"
    else:
        # keep_aspect is no way out: it feeds the whole resized strip to the model
        fix = "use model.preprocess.resize=stretch, or crop the image to a less extreme shape first"
    raise ConfigError(
        f"model.preprocess.resize={pre.resize}: an image of {w}x{h} would be resized to {new_w}x{new_h} = "
        f"{pixels:,} pixels (model.preprocess.input_size={int(pre.input_size)}), over the limit of "
        f"{MAX_RESIZED_PIXELS:,} (cnnviz.data.images.MAX_RESIZED_PIXELS); {fix}"
    )


def _resize_and_crop(img: Image.Image, pre, interp) -> Image.Image:
    size = int(pre.input_size)
    if pre.resize == "stretch":
        return img.resize((size, size), interp)
    img = img.resize(_resized_size(img.size, pre), interp)
    if pre.resize == "center_crop":
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def preprocess(img: Image.Image, pre) -> tuple[torch.Tensor, np.ndarray]:
    """Resize (and crop) as configured; returns the normalised ``(1, 3, H, W)`` input and the
    uint8 ``(H, W, 3)`` picture it shows, which overlays are drawn on. An image that would be
    resized to more than ``MAX_RESIZED_PIXELS`` is refused (``check_resized_size``)."""
    check_preprocess(pre)
    check_resized_size(img.size, pre)
    img = _resize_and_crop(img, pre, INTERPOLATIONS[pre.interpolation])
    picture = np.asarray(img, dtype=np.uint8).copy()
    x = torch.from_numpy(picture).permute(2, 0, 1).float().div(255.0)
    mean = torch.tensor(list(pre.mean)).view(3, 1, 1)
    std = torch.tensor(list(pre.std)).view(3, 1, 1)
    return ((x - mean) / std)[None], picture


def mask_to_input(mask: np.ndarray, size: tuple[int, int], pre) -> np.ndarray:
    """The boolean ``(h, w)`` object mask of an original image of ``size = (w, h)`` on the model input:
    the same resize and crop as ``preprocess``, nearest-neighbour, so that no pixel is half object.

    Example: a 2x nearest ``stretch`` of a 24 px mask repeats each pixel in a 2 x 2 block."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or (mask.shape[1], mask.shape[0]) != tuple(size):
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} pixels (w x h) but its image is "
                         f"{size[0]}x{size[1]}; a mask has the image's own size")
    pil = Image.fromarray(mask.astype(bool).astype(np.uint8) * 255, mode="L")
    return np.asarray(_resize_and_crop(pil, pre, Image.NEAREST)) > 127


def read_mask(path: str | os.PathLike, key: str = "mask") -> np.ndarray:
    """A mask file as a boolean ``(h, w)`` array: any non-zero pixel (any channel, alpha ignored) is object."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(_not_a_file(key, path))
    try:
        with Image.open(path) as img:
            img.load()
            values = np.asarray(img.convert("RGB") if img.mode not in ("1", "L", "I", "I;16", "F") else img)
    except (OSError, SyntaxError, ValueError) as e:
        raise ConfigError(f"{key}: '{path}' is not a readable mask image ({type(e).__name__}: {e})") from None
    return (values != 0).any(axis=-1) if values.ndim == 3 else values != 0


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
    new_w, new_h = _resized_size(size, pre)
    if pre.resize == "center_crop":
        return new_w / w, new_h / h, (new_w - size_in) // 2, (new_h - size_in) // 2
    return new_w / w, new_h / h, 0, 0


def box_to_original(box: Sequence[float], size: tuple[int, int], pre) -> tuple[int, int, int, int]:
    """Map ``box = (x0, y0, x1, y1)`` in model-input pixels (pixel edges, as
    ``cnnviz.methods._segmentation_ops.bounding_box`` gives) back to the original image of ``size = (w, h)``,
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
