"""The manifest file: what pandas would write, rows replaced by key, earlier rows kept on reopening."""
from __future__ import annotations

import pandas as pd

from cnnviz.output.manifest import COLUMNS, Manifest


def row(image="a", layer="l1", **extra):
    base = {"image": image, "model": "m", "weights": "w", "method": "gradcam", "layer": layer,
            "params": {"relu": True}, "target_request": "default", "target": 5, "status": "ok", "error": "",
            "duration_ms": 1.5, "target_prob": None}
    return {**base, **extra}


def test_file_reads_back_as_the_frame_pandas_would_write(tmp_path):
    m = Manifest(tmp_path / "manifest.csv")
    m.add(row())
    m.add(row(layer="l2", error='quote " comma , newline \n done', file_png="x.png"))
    m.add(row(image="b", layer=None, target=None, score=0.25))
    ours = pd.read_csv(m.path)
    theirs = pd.read_csv(pd.io.common.StringIO(m.frame().to_csv(index=False)))
    pd.testing.assert_frame_equal(ours, theirs)
    assert list(ours.columns[:len(COLUMNS)]) == COLUMNS and {"file_png", "score"} <= set(ours.columns)
    assert ours.loc[1, "error"] == 'quote " comma , newline \n done'
    assert ours.loc[2, "score"] == 0.25 and pd.isna(ours.loc[0, "score"]) and pd.isna(ours.loc[2, "target"])


def test_same_key_replaces_the_row_and_moves_it_last(tmp_path):
    m = Manifest(tmp_path / "manifest.csv")
    m.add(row(layer="l1", status="error", error="boom"))
    m.add(row(layer="l2"))
    m.add(row(layer="l1", status="ok"))
    frame = pd.read_csv(m.path)
    assert list(frame["layer"]) == ["l2", "l1"] and list(frame["status"]) == ["ok", "ok"]


def test_reopening_keeps_rows_and_completed_checks_the_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"png")
    from cnnviz.output.files import file_sha256

    m = Manifest(tmp_path / "manifest.csv")
    m.add(row(file_png="x.png", sha256_png=file_sha256(tmp_path / "x.png")))
    again = Manifest(tmp_path / "manifest.csv")
    assert len(again.rows) == 1
    assert again.completed(row(), "l1", tmp_path)
    (tmp_path / "x.png").write_bytes(b"changed")
    assert not again.completed(row(), "l1", tmp_path)
    again.add(row(layer="l2"))
    assert list(pd.read_csv(again.path)["layer"]) == ["l1", "l2"]
