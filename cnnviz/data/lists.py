"""Labelled image sets: lists (CSV / JSON lines) and folders with class subfolders.

A list names one image per row: ``path`` (relative to the list's own folder, or absolute), and
optionally ``target`` (a class index or a class name), ``box`` (``x0,y0,x1,y1`` in original-image
pixels), ``mask`` (an image file of the original's size whose non-zero pixels are the object, relative
like ``path``; it wins over ``box`` for the pointing game and relevance mass / rank) and ``name`` (the
files' stem; default: the path's stem). A folder gives its image files,
optionally those of its subfolders (``recursive``) or only those matching ``glob``; with
``label_from: subfolder`` each image's class is its subfolder's name, as torchvision's
``ImageFolder`` has it. Both take ``limit`` and ``shuffle`` + ``seed``.

Nothing is decoded here: each row becomes an ``ImageSource`` whose ``read`` opens the file when the
runner reaches it, so a list of 50,000 rows costs a list of 50,000 small objects. A row whose file
is missing or unreadable fails as that image's items (manifest rows with the error); the others run.
Class names are kept as names until the model is known (``resolve_labels``).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.errors import ConfigError
from .images import IMAGE_SUFFIXES, ImageSource, read_image, read_mask, safe_name

LIST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
LIST_COLUMNS = ("path", "target", "box", "name", "mask")


def list_sources(where: str, cfg) -> list[ImageSource]:
    """The images of a list file (``<where>.path``), in its order, then ``shuffle`` / ``limit``."""
    if not cfg.path:
        raise ConfigError(f"{where}.path is not set: use image=list {where}.path=/path/to/images.csv "
                          "(a CSV or JSON-lines file with a path column)")
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        what = "is a folder; for the images in it use image=folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"{where}.path: '{path}' {what}")
    rows = _read_rows(path, f"{where}.path")
    base = path.resolve().parent
    sources = [_row_source(where, path, base, n, row) for n, row in enumerate(rows, start=2 if _is_csv(path) else 1)]
    if not sources:
        raise ConfigError(f"{where}.path: '{path}' lists no images")
    return select(sources, cfg, where)


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() in (".csv", ".tsv")


def _read_rows(path: Path, key: str) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in LIST_SUFFIXES:
        raise ConfigError(f"{key}: '{path.name}' is not a list file; use a .csv / .tsv (with a header row) or a "
                          ".jsonl file (one JSON object per line), with a path column")
    text = path.read_text(encoding="utf-8-sig")
    if _is_csv(path):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{k.strip(): v for k, v in r.items() if k is not None} for r in reader]
    else:
        rows, columns = [], []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}: line {n} of '{path.name}' is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{key}: line {n} of '{path.name}' is not a JSON object")
            rows.append(row)
            columns += [c for c in row if c not in columns]
    if "path" not in columns:
        raise ConfigError(f"{key}: '{path.name}' has no path column (columns: {', '.join(columns) or 'none'}); "
                          f"a list needs path and may have {', '.join(LIST_COLUMNS[1:])}")
    unknown_cols = [c for c in columns if c not in LIST_COLUMNS]
    if unknown_cols:
        raise ConfigError(f"{key}: '{path.name}' has unknown column(s) {', '.join(unknown_cols)}; "
                          f"the columns are {', '.join(LIST_COLUMNS)}")
    return rows


def _row_source(where: str, path: Path, base: Path, line: int, row: dict[str, Any]) -> ImageSource:
    at = f"{where}.path: row at line {line} of '{path.name}'"
    file = str(row.get("path") or "").strip()
    if not file:
        raise ConfigError(f"{at} has an empty path")
    image = Path(file).expanduser()
    image = image if image.is_absolute() else base / image
    name = str(row.get("name") or "").strip() or image.stem
    mask_file = str(row.get("mask") or "").strip()
    mask = None
    if mask_file:
        mask_path = Path(mask_file).expanduser()
        mask_path = mask_path if mask_path.is_absolute() else base / mask_path
        mask = lambda p=mask_path: read_mask(p, f"{at}: mask")  # noqa: E731  (read when the image is)
    return ImageSource(safe_name(name), (lambda p=image: read_image(p, where)), parse_target(row.get("target"), at),
                       str(image), box=parse_box(row.get("box"), at), mask=mask)


def parse_target(value: Any, at: str) -> Any:
    """A row's class: None (no label), an int, or a class name resolved once the model is known."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{at}: target {value!r} is not a class index or name")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:  # "3.0": a spreadsheet's or pandas' integer column that has an empty cell is written as floats
        number = float(text)
    except ValueError:
        return text
    if number.is_integer():
        return int(number)
    raise ConfigError(f"{at}: target {value!r} is not a class index or name")


def parse_box(value: Any, at: str) -> Optional[tuple[float, float, float, float]]:
    """``x0,y0,x1,y1`` (a string or a list) with x0 < x1 and y0 < y1, or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.replace(";", ",").strip("[]() ").split(",") if isinstance(value, str) else value
    try:
        box = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        box = ()
    if len(box) != 4 or not box[0] < box[2] or not box[1] < box[3]:
        raise ConfigError(f"{at}: box {value!r} must be x0,y0,x1,y1 with x0 < x1 and y0 < y1 (original-image pixels)")
    return box  # type: ignore[return-value]


def folder_files(where: str, folder: Path, recursive: bool, glob: Optional[str]) -> list[Path]:
    """Image files of ``folder`` (of its subfolders too with ``recursive``; those matching ``glob``
    when given), sorted, hidden names skipped."""
    if glob:
        found = folder.glob(glob)
    else:
        found = folder.rglob("*") if recursive else folder.iterdir()
    # hidden names are the file system's and other tools' bookkeeping, not pictures: macOS writes
    # ._photo.jpg (AppleDouble) beside every file it copies to a foreign disk, with the same suffix
    files = sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts)
                   and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        pattern = f" matching {glob}" if glob else (" or its subfolders" if recursive else "")
        hint = "" if recursive or glob else f"; images in subfolders: {where}.recursive=true"
        raise ConfigError(f"{where}.path: folder '{folder}'{pattern} holds no images "
                          f"({', '.join(sorted(IMAGE_SUFFIXES))}){hint}")
    return files


def folder_sources(where: str, folder: Path, cfg) -> list[ImageSource]:
    """A folder's images, labelled by subfolder when ``label_from: subfolder``."""
    label_from = cfg.get("label_from")
    if label_from not in (None, "subfolder"):
        raise ConfigError(f"{where}.label_from must be subfolder or null, got '{label_from}'")
    by_class = label_from == "subfolder"
    files = folder_files(where, folder, bool(cfg.get("recursive")) or by_class, cfg.get("glob"))
    if by_class:
        loose = [p.name for p in files if p.parent == folder]
        if loose:
            raise ConfigError(f"{where}.label_from=subfolder: {len(loose)} image(s) lie directly in '{folder}' "
                              f"(e.g. {loose[0]}), outside any class subfolder; move them, or set {where}.glob")
    sources = []
    for p in files:
        rel = p.relative_to(folder)
        # a recursive folder may hold cat/1.png and dog/1.png: the stem alone would clash
        name = "_".join(rel.with_suffix("").parts) if len(rel.parts) > 1 else p.stem
        label = rel.parts[0] if by_class else cfg.get("target")
        sources.append(ImageSource(safe_name(name), (lambda p=p: read_image(p, where)), label, str(p)))
    if by_class:
        sources = _subfolder_labels(where, folder, sources, cfg.get("class_index"))
    return select(sources, cfg, where)


def _subfolder_labels(where: str, folder: Path, sources: list[ImageSource], class_index: Optional[str]) -> list[ImageSource]:
    """Subfolder names to class indices through ``class_index`` (or ``class_index.json`` in the
    folder); without one the names stay names, matched to the model's class names later."""
    path = Path(class_index).expanduser() if class_index else folder / "class_index.json"
    if not path.is_file():
        if class_index:
            raise ConfigError(f"{where}.class_index: '{path}' does not exist")
        return sources
    mapping = read_class_index(path, f"{where}.class_index")
    missing = sorted({s.default_target for s in sources} - set(mapping))
    if missing:
        raise ConfigError(f"{where}.class_index: '{path.name}' has no class for subfolder(s) {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}")
    return [dataclasses.replace(s, default_target=mapping[s.default_target]) for s in sources]


def read_class_index(path: Path, key: str) -> dict[str, int]:
    """Names -> class indices from a JSON file: ``{"0": ["n01440764", "tench"], ...}`` (ImageNet's
    class_index.json: both the id and the name map to the index), ``{"0": "tench"}`` or ``{"tench": 0}``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{key}: cannot read '{path}' as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: '{path}' must hold a JSON object")
    out: dict[str, int] = {}
    for k, v in data.items():
        if isinstance(v, int) and not isinstance(v, bool):
            out[str(k)] = v
        elif str(k).lstrip("-").isdigit():
            for name in (v if isinstance(v, list) else [v]):
                out[str(name)] = int(k)
        else:
            raise ConfigError(f"{key}: '{path}': entry {k!r}: {v!r} is neither index -> name(s) nor name -> index")
    return out


def select(sources: list[ImageSource], cfg, where: str) -> list[ImageSource]:
    """``shuffle`` (seeded by ``seed``), then the first ``limit``."""
    limit = cfg.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{where}.limit={limit!r}: must be a positive integer or null (all images)")
    if cfg.get("shuffle"):
        sources = list(sources)
        random.Random(int(cfg.get("seed") or 0)).shuffle(sources)
    return sources[:limit] if limit is not None else sources


def resolve_labels(sources: Sequence[ImageSource], class_names: Sequence[str], num_classes: int) -> list[ImageSource]:
    """Class names of the images' labels as indices of the model (a name matches a class name, or
    one of its comma-separated synonyms, ignoring case); indices checked against ``num_classes``.
    A label that cannot be resolved is a ConfigError listing close class names."""
    from ..core.errors import close_matches

    lookup: dict[str, int] = {}
    for i, full in enumerate(class_names):
        for name in [full, *str(full).split(",")]:
            lookup.setdefault(name.strip().lower(), i)
    out, bad = [], {}
    for s in sources:
        label = s.default_target
        if isinstance(label, str):
            index = lookup.get(label.strip().lower())
            if index is None:
                bad.setdefault(label, s.origin)
                continue
            s = dataclasses.replace(s, default_target=index)
        elif isinstance(label, int) and not 0 <= label < num_classes:
            raise ConfigError(f"image: {s.origin}: target {label} is out of range; the model has {num_classes} "
                              f"classes (0..{num_classes - 1})")
        out.append(s)
    if bad:
        label, origin = next(iter(bad.items()))
        near = close_matches(label.lower(), list(lookup))
        known = "the model has no class names: use class indices" if not lookup else (
            f"close class names: {', '.join(near)}" if near else "use class indices or the model's class names")
        raise ConfigError(f"image: {len(bad)} label(s) are not class names of the model, e.g. '{label}' ({origin}); "
                          f"{known} (or a class_index.json for subfolders)")
    return out
