"""The run's manifest: one row per computed attribution, rewritten atomically after each row."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from .files import atomic_write

#: Leading columns, always present and in this order; file columns follow.
COLUMNS = [
    "image", "image_sha256", "model", "weights", "weights_sha256", "layer", "method", "params", "target_request", "target", "target_name",
    "predicted", "predicted_name", "predicted_prob", "target_prob", "status", "error", "warnings", "duration_ms",
]


#: Columns that identify an item: a new row replaces an earlier row with the same values.
KEY = ["image", "model", "weights", "method", "layer", "params", "target_request"]


class ManifestError(ValueError):
    """A manifest that cannot be used: the message names the file and what is wrong."""


def _kind(path: Path) -> str:
    return "directory" if path.is_dir() else "special file"


def read_manifest(path: Path) -> tuple[pd.DataFrame, Optional[str]]:
    """The rows of a manifest file, and ``None`` or a description of its damage (the file and its
    first bad row). A row is intact when it parses as CSV with as many fields as the header; a file
    cut short (a killed writer on a filesystem without atomic rename, a hand edit) keeps its intact rows.
    A file that is not a cnnviz manifest at all raises ``ManifestError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} cannot be read as a manifest ({type(e).__name__}: {e})") from None
    lines = text.splitlines(keepends=True)
    rows: list[list[str]] = []
    damage = None
    line_no = 0
    reader = csv.reader(io.StringIO(text), strict=True)
    header: Optional[list[str]] = None
    while True:
        start = reader.line_num
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            damage = f"{path}: line {start + 1} is damaged ({e}); {len(rows)} intact row(s) before it are kept"
            break
        line_no = reader.line_num
        if header is None:
            header = record
            missing = [c for c in ("image", "method", "status") if c not in header]
            if missing:
                raise ManifestError(f"{path} is not a cnnviz manifest (no {', '.join(missing)} column in its header "
                                    f"line); move it away or choose another output folder (hydra.run.dir=...)")
            continue
        if len(record) != len(header):
            damage = (f"{path}: row {len(rows) + 1} (line {start + 1}) has {len(record)} fields, the header {len(header)}; "
                      f"{len(rows)} intact row(s) before it are kept")
            break
        rows.append(record)
    if damage is None and text and not text.endswith("\n") and rows and line_no == len(lines):
        # the writer ends every row with a newline: a last row without one was cut short
        rows.pop()
        damage = f"{path}: the last row (line {line_no}) is cut short; {len(rows)} intact row(s) before it are kept"
    if header is None:
        return pd.DataFrame(columns=COLUMNS), damage
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    buf.seek(0)
    return pd.read_csv(buf, dtype={"target": "Int64", "predicted": "Int64"}), damage


def _cell(value: Any) -> str:
    if isinstance(value, dict):  # params as the manifest stores them
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)) else str(value)


def _key(row: dict[str, Any]) -> tuple:
    return tuple(_cell(row.get(k)) for k in KEY)


class Manifest:
    """Rows already in ``path`` are kept: running again into a folder never loses earlier rows.

    Each row's CSV line is encoded once (again only when a new column appears), so writing the
    file after every row costs a join of the lines, not a DataFrame of all rows: linear instead of
    quadratic in a long sweep (docs/performance.md).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows: dict[tuple, dict[str, Any]] = {}  # by key, in the order last written
        self._lines: dict[tuple, str] = {}
        self._columns: list[str] = list(COLUMNS)
        #: None, or what was wrong with the file: its intact rows are kept, the rest is recomputed
        self.damage: Optional[str] = None
        if self.path.exists() and not self.path.is_file():
            raise ManifestError(f"{self.path} is not a file (a {_kind(self.path)} is in the way); "
                                "move it away or choose another output folder (hydra.run.dir=...)")
        if self.path.is_file() and self.path.stat().st_size:
            frame, self.damage = read_manifest(self.path)
            for row in frame.to_dict("records"):
                self._put(row)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())

    def _put(self, row: dict[str, Any]) -> None:
        key = _key(row)
        self._rows.pop(key, None)
        self._lines.pop(key, None)
        self._rows[key] = row
        new = sorted(set(row) - set(self._columns))
        if new:
            self._columns = COLUMNS + sorted(set(self._columns[len(COLUMNS):]) | set(new))
            self._lines = {k: self._line(r) for k, r in self._rows.items()}
        else:
            self._lines[key] = self._line(row)

    def _line(self, row: dict[str, Any]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in self._columns])
        return buf.getvalue()

    def add(self, row: dict[str, Any]) -> None:
        self.extend([row])

    def extend(self, rows: list[dict[str, Any]]) -> None:
        """Add (or replace, by key) the rows, then rewrite the file once."""
        for row in rows:
            row = dict(row)
            if isinstance(row.get("params"), dict):
                row["params"] = json.dumps(row["params"], sort_keys=True, default=str)
            self._put(row)
        self.write()

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self._columns)

    def write(self) -> None:
        header = self._line(dict(zip(self._columns, self._columns)))
        atomic_write(self.path, (header + "".join(self._lines.values())).encode(), durable=True)

    def completed(self, key: dict[str, Any], layer: Any, folder: Path, require: Optional[Callable[[dict], bool]] = None,
                  content: Optional[dict[str, Any]] = None) -> bool:
        """Whether the item ``key`` at ``layer`` has an ``ok`` row whose files exist with their sha256,
        whose ``content`` columns (the input's and the weights' sha256) equal the given values, and
        for which ``require(row)`` holds (e.g. the configured metrics are in it)."""
        from .files import file_sha256

        found = self._rows.get(_key({**key, "layer": layer}))  # by key: a resumed long list is not quadratic
        rows = [found] if found is not None and found.get("status") == "ok" else []
        if not rows or (require is not None and not require(rows[-1])):
            return False
        if any(_cell(rows[-1].get(col)) != _cell(value) for col, value in (content or {}).items()):
            return False
        for col, rel in rows[-1].items():
            if col.startswith("file_") and isinstance(rel, str):
                path = folder / rel
                if not path.is_file() or file_sha256(path) != rows[-1].get("sha256_" + col[5:]):
                    return False
        return True
