"""The gallery's pure functions on hand-made manifests: the contact sheet stays one bounded
picture on a long run, and index.html loads its pictures lazily."""
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cnnviz.output import gallery
from cnnviz.output.files import png_bytes


def _frame(folder: Path, n: int) -> pd.DataFrame:
    pic = np.full((32, 32, 3), 200, np.uint8)
    (folder / "a.png").write_bytes(png_bytes(pic))
    return pd.DataFrame([{"image": f"im{k}", "method": "vanilla_backprop", "layer": "", "target_request": "default",
                          "job": "", "status": "ok", "file_input": "a.png", "file_gray": "a.png"} for k in range(n)])


def test_contact_sheet_holds_at_most_max_rows_and_says_so(tmp_path):
    few, many = _frame(tmp_path, 3), _frame(tmp_path, gallery.SHEET_MAX_IMAGES + 40)
    with Image.open(__import__("io").BytesIO(gallery.contact_sheet(few, tmp_path))) as a:
        small = a.size
    with Image.open(__import__("io").BytesIO(gallery.contact_sheet(many, tmp_path))) as b:
        big = b.size
    row = (small[1] - gallery.SHEET_HEADER - gallery.SHEET_PAD) // 3
    assert small[0] == big[0]
    assert big[1] == gallery.SHEET_HEADER + gallery.SHEET_PAD + gallery.SHEET_MAX_IMAGES * row
    assert gallery.sheet_note(len(many), gallery.SHEET_MAX_IMAGES).startswith(f"first {gallery.SHEET_MAX_IMAGES} of {len(many)}")
    assert gallery.sheet_note(3, 3) == ""


def test_index_html_lists_every_image_with_lazy_pictures(tmp_path):
    frame = _frame(tmp_path, gallery.SHEET_MAX_IMAGES + 5)
    page = gallery.index_html(frame)
    assert page.count("<tr>") == len(frame) + 1
    assert page.count("<img ") == page.count('loading="lazy"') == 2 * len(frame)
