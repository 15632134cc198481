"""``index.html`` and ``contact_sheet.png``: the rows of a manifest as a grid of pictures.

Rows are images, columns are method × layer (× target); the first column is the input. Knows rows
and files only, never techniques.
"""
from __future__ import annotations

import html
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from .files import atomic_write, png_bytes, read_png

#: Which picture of a row stands for it, in order of preference.
PREFERRED = ("file_cam_on_image", "file_lrp_heatmap", "file_png_overlay", "file_png_final", "file_gray", "file_color")

#: The contact sheet shows the first this many images: one PNG of a 50,000-image run would take
#: gigabytes to compose and nobody could read it; index.html lists every image.
SHEET_MAX_IMAGES = 64
SHEET_PAD, SHEET_HEADER, SHEET_LABEL = 4, 40, 14

#: The metric summary page (``report.write_report``) beside index.html. The runner writes the gallery
#: before the summary and a later summary may appear beside an older gallery, so the link follows the
#: file, whichever comes first: ``write_gallery`` links the page when it exists and otherwise leaves
#: ``SUMMARY_SLOT``, which ``link_summary`` (called once the page is written) turns into the link.
SUMMARY_PAGE = "summary.html"
SUMMARY_SLOT = "<!-- cnnviz: link to the metric summary -->"


def _text(value) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _number(value) -> float:
    """A cell as a float, NaN when empty or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def cell_file(row: Mapping[str, Any]) -> Optional[str]:
    for col in PREFERRED:
        if col in row and isinstance(row[col], str):
            return row[col]
    return None


def caption(row: Mapping[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"error: {_text(row.get('error'))}"
    parts = []
    if _text(row.get("target")):
        prob = row.get("target_prob")
        parts.append(f"target {int(row['target'])} {_text(row.get('target_name'))}" + (f" p={prob:.3f}" if pd.notna(prob) else ""))
    if _text(row.get("predicted")):
        parts.append(f"predicted {int(row['predicted'])} {_text(row.get('predicted_name'))} p={row['predicted_prob']:.3f}")
    from ..metrics import metric_columns

    for col in metric_columns():  # the map's faithfulness / sanity scores, when measured
        value = _number(row.get(col))
        if not np.isnan(value):
            parts.append(f"{col.replace('_', ' ')} {value:.3f}")
    return "; ".join(parts)


Grid = tuple[list[str], list[tuple], dict]


def grid(frame: pd.DataFrame) -> Grid:
    """Images, column keys (method, layer, target request, job) and ``{(image, key): row dict}``."""
    rows = frame.to_dict("records")
    for row in rows:
        for col in ("image", "method", "layer", "target_request", "job"):  # a job that never started has no image or method
            v = row.get(col)
            row[col] = v if isinstance(v, str) else ("" if v is None or pd.isna(v) else str(v))
    images = list(dict.fromkeys(r["image"] for r in rows))
    cells = {(r["image"], (r["method"], r["layer"], r["target_request"], r["job"])): r for r in rows}
    columns = list(dict.fromkeys(key for _, key in cells))
    return images, columns, cells


def input_file(cells: dict, image: str) -> Optional[str]:
    """The input picture of ``image`` (every row of the image names the same file)."""
    first = next((row for (i, _), row in cells.items() if i == image), None)
    src = first.get("file_input") if first is not None else None
    return src if isinstance(src, str) else None


def column_title(key: tuple) -> str:
    method, layer, target, job = key
    return " ".join(p for p in (method, f"@ {layer}" if layer else "", f"target {target}" if target not in ("", "default") else "",
                                f"[{job}]" if job else "") if p)


def summary_link(page: str = SUMMARY_PAGE) -> str:
    return f'<p class=summary><a href="{html.escape(page)}">metric summary: ranking, box plots, curves</a></p>'


def index_html(frame: pd.DataFrame, cells_grid: Optional[Grid] = None, summary: Optional[str] = None) -> str:
    """The gallery page; ``summary``: the file name of the metric summary page to link (None: the
    slot ``link_summary`` fills in later)."""
    images, columns, cells = cells_grid or grid(frame)
    head = "".join(f"<th>{html.escape(column_title(k))}</th>" for k in columns)
    body = []
    for image in images:
        src = input_file(cells, image)
        tds = [f"<th>{html.escape(image)}<br>" + (f'<img src="{html.escape(src)}" alt="{html.escape(image)}" loading="lazy">' if src else "") + "</th>"]
        for key in columns:
            row = cells.get((image, key))
            if row is None:
                tds.append("<td></td>")
                continue
            f = cell_file(row)
            pic = f'<img src="{html.escape(f)}" alt="{html.escape(column_title(key))}" loading="lazy">' if f and row.get("status") == "ok" else ""
            tds.append(f"<td>{pic}<div class=cap>{html.escape(caption(row))}</div></td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>cnnviz gallery</title>
<style>body{{font-family:sans-serif;font-size:12px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:center}} img{{width:180px;height:auto;display:block;margin:auto}}
.cap{{max-width:180px}}</style></head>
<body><h1>cnnviz gallery</h1><p>{len(frame)} item(s); rows: images, columns: method @ layer</p>
{summary_link(summary) if summary else SUMMARY_SLOT}
<table><tr><th>input</th>{head}</tr>
{chr(10).join(body)}
</table></body></html>
"""


def sheet_note(n_images: int, shown: int) -> str:
    """The header's line when the sheet leaves images out ("" when it shows them all)."""
    return "" if shown >= n_images else f"first {shown} of {n_images} images; index.html lists all"


def contact_sheet(frame: pd.DataFrame, folder: Path, cell: int = 160, cells_grid: Optional[Grid] = None,
                  max_images: int = SHEET_MAX_IMAGES) -> bytes:
    """The same grid as one PNG: a header row of column titles, then per image its input and each
    column's picture, thumbnails of ``cell`` px (composed with PIL: a matplotlib figure is much slower).
    At most ``max_images`` rows, so memory and size stay bounded however long the run."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    all_images, columns, cells = cells_grid or grid(frame)
    images = all_images[:max_images]
    font = ImageFont.load_default()
    pad, header, label = SHEET_PAD, SHEET_HEADER, SHEET_LABEL
    width = (len(columns) + 1) * (cell + pad) + pad
    height = header + len(images) * (cell + label + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    titles = ["input"] + [column_title(k) for k in columns]
    note = sheet_note(len(all_images), len(images))
    for c, title in enumerate(titles):
        lines = textwrap.wrap(title, width=max(8, cell // 6))[: 2 if note else 3]
        draw.multiline_text((pad + c * (cell + pad), pad), "\n".join(lines), fill="black", font=font, spacing=1)
    if note:
        draw.text((pad, header - label), note, fill="red", font=font)

    def thumbnail(f):
        picture = read_png(folder / f) if isinstance(f, str) else None
        if picture is None:
            return None
        thumb = Image.fromarray(picture)
        thumb.thumbnail((cell, cell), Image.Resampling.BILINEAR)  # before the RGB conversion: a grey map resizes faster
        return thumb.convert("RGB")

    def row_files(image):
        files = [input_file(cells, image)]
        for key in columns:
            row = cells.get((image, key))
            files.append(cell_file(row) if row is not None and row.get("status") == "ok" else None)
        return files

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:  # decoding and resizing release the GIL
        for r, image in enumerate(images):  # one row's thumbnails at a time
            top = header + r * (cell + label + pad)
            for c, thumb in enumerate(pool.map(thumbnail, row_files(image))):
                left = pad + c * (cell + pad)
                if thumb is not None:
                    sheet.paste(thumb, (left, top))
                elif c > 0 and cells.get((image, columns[c - 1])) is not None:
                    draw.text((left, top + cell // 2), "error", fill="red", font=font)
            draw.text((pad, top + cell + 1), image, fill="black", font=font)
    return png_bytes(np.asarray(sheet))


def write_gallery(folder: Path, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    cells_grid = grid(frame)
    summary = SUMMARY_PAGE if (Path(folder) / SUMMARY_PAGE).is_file() else None
    atomic_write(folder / "index.html", index_html(frame, cells_grid, summary).encode())
    atomic_write(folder / "contact_sheet.png", contact_sheet(frame, folder, cells_grid=cells_grid))


def link_summary(folder: str | os.PathLike, page: str = SUMMARY_PAGE) -> bool:
    """Link ``page`` from ``folder``'s index.html by filling its ``SUMMARY_SLOT``; False when there is no
    index.html or no slot (already linked, or written before the slot existed)."""
    index = Path(folder) / "index.html"
    try:
        text = index.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    if SUMMARY_SLOT not in text:
        return False
    atomic_write(index, text.replace(SUMMARY_SLOT, summary_link(page), 1).encode("utf-8"))
    return True
