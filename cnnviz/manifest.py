"""The run's manifest: one row per computed attribution, rewritten atomically after each row."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from .files import atomic_write

#: Leading columns, always present and in this order; file columns follow.
COLUMNS = [
    "image", "image_sha256", "model", "weights", "layer", "method", "params", "target_request", "target", "target_name",
    "predicted", "predicted_name", "predicted_prob", "target_prob", "status", "error", "warnings", "duration_ms",
]


#: Columns that identify an item: a new row replaces an earlier row with the same values.
KEY = ["image", "model", "weights", "method", "layer", "params", "target_request"]


def _cell(value: Any) -> str:
    if isinstance(value, dict):  # params as the manifest stores them
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)) else str(value)


def _key(row: dict[str, Any]) -> tuple:
    return tuple(_cell(row.get(k)) for k in KEY)


class Manifest:
    """Rows already in ``path`` are kept: running again into a folder never loses earlier rows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file() and self.path.stat().st_size:
            self.rows = pd.read_csv(self.path, dtype={"target": "Int64", "predicted": "Int64"}).to_dict("records")

    def add(self, row: dict[str, Any]) -> None:
        row = dict(row)
        if isinstance(row.get("params"), dict):
            row["params"] = json.dumps(row["params"], sort_keys=True, default=str)
        key = _key(row)
        self.rows = [r for r in self.rows if _key(r) != key] + [row]
        self.write()

    def frame(self) -> pd.DataFrame:
        extra = sorted({k for r in self.rows for k in r} - set(COLUMNS))
        return pd.DataFrame(self.rows, columns=COLUMNS + extra)

    def write(self) -> None:
        atomic_write(self.path, self.frame().to_csv(index=False).encode())

    def completed(self, key: dict[str, Any], layer: Any, folder: Path, require: Optional[Callable[[dict], bool]] = None) -> bool:
        """Whether the item ``key`` at ``layer`` has an ``ok`` row whose files exist with their sha256
        (and for which ``require(row)`` holds, e.g. the configured metrics are in it)."""
        from .files import file_sha256

        want = _key({**key, "layer": layer})
        rows = [r for r in self.rows if _key(r) == want and r.get("status") == "ok"]
        if not rows or (require is not None and not require(rows[-1])):
            return False
        for col, rel in rows[-1].items():
            if col.startswith("file_") and isinstance(rel, str):
                path = folder / rel
                if not path.is_file() or file_sha256(path) != rows[-1].get("sha256_" + col[5:]):
                    return False
        return True
