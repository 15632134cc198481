"""Procedural images whose class evidence is known per pixel.

Each image is a natural-ish background (a crop of one of scikit-image's bundled photos or textures,
or smooth colour noise), a few distractors (filled discs, squares, bars and ellipses), and one planted
object whose *shape* is the class: a ring, a cross, a triangle or a patch of stripes. Object and
distractors are drawn in the same small palette, and one distractor always has the object's colour,
so a map that lights up "anything salient" or "anything red" does not find the evidence; only the
shape does. The object is drawn last, over nothing it could hide, so its boolean mask is exactly its
pixels — the ground truth that pointing game and relevance mass/rank need.

Everything is seeded: image ``i`` of seed ``s`` comes from its own random stream ``(s, i)``, so it is
the same whatever ``n`` is, and nothing is downloaded (the photos ship inside scikit-image).

    >>> from cnnviz.benchmark.data import make_dataset
    >>> images, labels, masks = make_dataset(8, seed=0, size=64)
    >>> images.shape, labels.shape, masks.shape
    ((8, 64, 64, 3), (8,), (8, 64, 64))
"""
from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

#: the classes, in label order: a class is a shape, whatever its colour
CLASSES = ("ring", "cross", "triangle", "stripes")
#: the colours of objects and distractors alike (RGB)
PALETTE = ((220, 40, 40), (40, 170, 60), (50, 90, 230), (235, 205, 30), (200, 60, 200))
#: the shapes distractors take: none of them is a class
DISTRACTORS = ("disc", "square", "bar", "ellipse")

#: scikit-image's bundled photos and textures (read from its package folder, never fetched)
_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg",
           "brick.png", "grass.png", "gravel.png", "camera.png", "moon.png")
#: object radius as a fraction of the image side: small enough that distractors fit beside it
_RADIUS = (0.12, 0.22)
_DISTRACTOR_RADIUS = (0.07, 0.15)
#: every shape fits in a circle of this many radii (the stripes' and the square's corners reach past r),
#: the circle used to keep shapes apart and inside the image
_EXTENT = 1.15


@dataclass(frozen=True)
class Shape:
    """A shape drawn in one flat colour: kind, centre (row, column), radius and angle (radians)."""
    kind: str
    colour: tuple[int, int, int]
    cy: float
    cx: float
    radius: float
    angle: float


@dataclass(frozen=True)
class Scene:
    """What an image is made of: the background, the distractors (drawn in order), the object."""
    background: np.ndarray
    distractors: tuple[Shape, ...]
    object: Shape


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    label: int
    mask: np.ndarray  # (H, W) bool: the object's pixels
    scene: Scene


def draw(kind: str, size: int, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    """The ``(size, size)`` boolean mask of a shape (a class or a distractor), hard-edged so that a
    pixel is evidence or not. Pixel centres are sampled: a pixel belongs when its centre is inside."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = y - cy, x - cx
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the shape's own frame
    r = float(radius)
    if kind == "ring":
        d = np.hypot(u, v)
        return (d <= r) & (d >= 0.55 * r)
    if kind == "cross":
        w = 0.22 * r
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if kind == "triangle":  # equilateral, circumradius r: inside all three edges' half-planes
        inside = np.ones_like(u, bool)
        for k in range(3):
            a = angle + math.pi / 2 + k * 2 * math.pi / 3
            inside &= (math.cos(a) * dx + math.sin(a) * dy) >= -0.5 * r
        return inside
    if kind == "stripes":  # three bars across a square of side 1.6 r
        half = 0.8 * r
        band = np.floor((u + half) / (2 * half / 5))
        return (np.abs(u) <= half) & (np.abs(v) <= half) & (band % 2 == 0) & (band < 5)
    if kind == "disc":
        return np.hypot(u, v) <= r
    if kind == "square":
        return (np.abs(u) <= 0.75 * r) & (np.abs(v) <= 0.75 * r)
    if kind == "bar":
        return (np.abs(u) <= 0.2 * r) & (np.abs(v) <= r)
    if kind == "ellipse":
        return (u / r) ** 2 + (v / (0.5 * r)) ** 2 <= 1
    raise ValueError(f"unknown shape '{kind}'; shapes: {', '.join(CLASSES + DISTRACTORS)}")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    with Image.open(Path(skimage.data.__file__).parent / name) as img:
        return np.asarray(img.convert("RGB"))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photo crop (two thirds of the images) or smooth colour noise, at reduced contrast so the
    planted shapes and distractors stand out about equally on any of them."""
    if rng.random() < 2 / 3:
        photo = _photo(_PHOTOS[rng.integers(len(_PHOTOS))])
        h, w = photo.shape[:2]
        side = int(rng.uniform(0.2, 0.6) * min(h, w))
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.BILINEAR)
        bg = np.asarray(crop, np.float64)
    else:  # colour noise at a random scale: a coarse grid upsampled smoothly
        cells = int(rng.integers(3, 12))
        grid = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        bg = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float64)
        bg = bg + rng.normal(0, 12, bg.shape)
    return np.clip(0.6 * bg + 0.4 * 128, 0, 255).astype(np.uint8)


def _free(placed: list[tuple[float, float, float]], cy: float, cx: float, r: float) -> bool:
    return all(math.hypot(cy - y, cx - x) > _EXTENT * (r + pr) + 2 for y, x, pr in placed)


def _scene(rng: np.random.Generator, label: int, size: int) -> Scene:
    background = _background(rng, size)
    colour_index = int(rng.integers(len(PALETTE)))
    r = rng.uniform(*_RADIUS) * size
    cy, cx = (rng.uniform(_EXTENT * r + 1, size - _EXTENT * r - 2) for _ in range(2))
    obj = Shape(CLASSES[label], PALETTE[colour_index], cy, cx, r, rng.uniform(0, 2 * math.pi))
    placed, distractors = [(cy, cx, r)], []
    for k in range(int(rng.integers(2, 5))):
        # the first distractor has the object's colour: colour alone never tells where the evidence is
        colour = PALETTE[colour_index] if k == 0 else PALETTE[rng.integers(len(PALETTE))]
        kind = DISTRACTORS[rng.integers(len(DISTRACTORS))]
        for _ in range(30):
            dr = rng.uniform(*_DISTRACTOR_RADIUS) * size
            dy, dx = (rng.uniform(_EXTENT * dr + 1, size - _EXTENT * dr - 2) for _ in range(2))
            if _free(placed, dy, dx, dr):
                placed.append((dy, dx, dr))
                distractors.append(Shape(kind, colour, dy, dx, dr, rng.uniform(0, 2 * math.pi)))
                break
    return Scene(background, tuple(distractors), obj)


def compose(scene: Scene, with_object: bool = True) -> np.ndarray:
    """The image of ``scene``: background, distractors, then (unless ``with_object`` is false) the object."""
    image = scene.background.copy()
    size = image.shape[0]
    for shape in scene.distractors + ((scene.object,) if with_object else ()):
        image[draw(shape.kind, size, shape.cy, shape.cx, shape.radius, shape.angle)] = shape.colour
    return image


def make_sample(seed: int, index: int, size: int = 64) -> Sample:
    """Image ``index`` of the set ``seed``: classes take turns (``index % len(CLASSES)``), so any
    prefix of a set is balanced; everything else comes from the random stream ``(seed, index)``."""
    label = index % len(CLASSES)
    scene = _scene(np.random.default_rng([seed, index]), label, size)
    o = scene.object
    return Sample(compose(scene), label, draw(o.kind, size, o.cy, o.cx, o.radius, o.angle), scene)


def make_dataset(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images of set ``seed``: ``(images uint8 (N, H, W, 3), labels int64 (N,), masks bool (N, H, W))``."""
    if n < 1 or size < 24:
        raise ValueError(f"make_dataset needs n >= 1 and size >= 24 pixels, got n={n}, size={size}")
    samples = [make_sample(seed, i, size) for i in range(n)]
    return (np.stack([s.image for s in samples]), np.array([s.label for s in samples], np.int64),
            np.stack([s.mask for s in samples]))


#: the held-out set of the benchmark (the training set is seed 0: ``cnnviz.benchmark.model.Recipe``)
HELD_OUT_SEED = 1
#: the side the benchmark CNN is trained at (``Recipe.size``), the images' default size
IMAGE_SIZE = 48


def benchmark_sources(where: str, cfg) -> list:
    """``image=benchmark``: the first ``limit`` images of set ``seed`` (default: the held-out set),
    each with its label as its target and its exact object mask, generated when the runner reaches it."""
    from ..core.errors import ConfigError
    from ..data.images import ImageSource, sha256_bytes

    n = cfg.get("limit")
    if n is None or int(n) < 1:
        raise ConfigError(f"{where}.limit: how many benchmark images, >= 1 (e.g. {where}.limit=40), got {n}")
    seed = int(cfg.get("seed", HELD_OUT_SEED))
    if seed == 0:
        log_training_set(where)

    @functools.lru_cache(maxsize=4)
    def sample(i: int) -> Sample:
        return make_sample(seed, i, IMAGE_SIZE)

    def read(i: int):
        image = sample(i).image
        return Image.fromarray(image), sha256_bytes(image.tobytes())

    return [ImageSource(f"{CLASSES[i % len(CLASSES)]}_{i:04d}", functools.partial(read, i), i % len(CLASSES),
                        f"cnnviz.benchmark.data.make_sample(seed={seed}, index={i}, size={IMAGE_SIZE})",
                        mask=functools.partial(lambda i: sample(i).mask, i))
            for i in range(int(n))]


def log_training_set(where: str) -> None:
    import logging

    logging.getLogger("cnnviz").warning("%s.seed=0 is the benchmark CNN's training set; its held-out images are "
                                        "seed %d", where, HELD_OUT_SEED)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The mask's bounding box ``x0, y0, x1, y1`` in pixel edges (x1, y1 one past the last pixel)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def save_split(folder: str | Path, images: np.ndarray, labels: Sequence[int], masks: np.ndarray,
               names: Optional[Sequence[str]] = None, mask_column: bool = True) -> Path:
    """Write a set as ``images/<name>.png``, ``masks/<name>.png`` (0/255) and ``list.csv``; returns the list.

    The list has the columns ``image=list`` reads: ``path, target, box, name`` (the box is the mask's
    bounding box) and, with ``mask_column=True``, ``mask`` (the mask's path, relative to the list), which
    the pointing game and relevance mass / rank then use instead of the box."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    names = list(names) if names is not None else [f"{CLASSES[int(y)]}_{i:04d}" for i, y in enumerate(labels)]
    columns = ["path", "target", "box", "name"] + (["mask"] if mask_column else [])
    listed = folder / "list.csv"
    with open(listed, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for name, image, label, mask in zip(names, images, labels, masks):
            Image.fromarray(image).save(folder / "images" / f"{name}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{name}.png")
            row = [f"images/{name}.png", int(label), ",".join(str(v) for v in mask_box(mask)), name]
            writer.writerow(row + ([f"masks/{name}.png"] if mask_column else []))
    return listed
