"""The runner's items are typed: an ``ItemResult`` per technique (Attributions or the error that
stopped it, and its time), and ``_item_rows`` turns one into rows without raising."""
from __future__ import annotations

from pathlib import Path

from cnnviz.app.runner import RunOutput, Unit, _item_rows
from cnnviz.engine import ItemResult
from cnnviz.output.render import RenderOptions

BASE = {"image": "dog", "model": "m", "weights": "w", "weights_sha256": "", "method": "gradcam", "params": "{}",
        "target_request": "default"}


def test_a_failed_item_gives_one_error_row_per_layer_with_its_time_and_a_plain_message(tmp_path):
    unit = Unit(0, "gradcam", ("a", "b"), 7)
    error = ValueError("\x1b[31mboom\x1b[0m")  # a library that colours its errors
    rows = _item_rows(unit, BASE, ItemResult.failed(error, 12.34), None, RunOutput(None, Path(tmp_path), RenderOptions(), False))
    assert [r["layer"] for r in rows] == ["a", "b"]
    assert all(r["status"] == "error" and r["error"] == "ValueError: boom" and r["duration_ms"] == 12.3
               and r["target"] == 7 and r["image"] == "dog" for r in rows)
    assert list(tmp_path.iterdir()) == []


def test_an_item_whose_files_fail_is_an_error_row_not_an_exception(tmp_path):
    """A result without error whose writing fails (here: no image to explain) is recorded, not raised."""
    rows = _item_rows(Unit(0, "vanilla_backprop", (), None), BASE, ItemResult([], None, 5.0), None,
                      RunOutput(None, Path(tmp_path), RenderOptions(), False))
    assert len(rows) == 1 and rows[0]["layer"] is None and rows[0]["target"] is None
    assert rows[0]["status"] == "error" and rows[0]["duration_ms"] == 5.0


def test_an_image_that_cannot_be_read_fails_every_item_with_its_error():
    result = ItemResult.failed(OSError("cannot identify image file"))
    assert result.attributions is None and result.ms == 0.0 and isinstance(result.error, OSError)
