"""Labelled image sets (``image=list``, ``image=folder`` with labels) and batched runs end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from cnnviz.core.errors import ConfigError
from cnnviz.data import images as images_mod
from cnnviz.data.lists import resolve_labels
from cnnviz.data.images import sources_from_config
from conftest import ROOT, run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")


def _png(path: Path, seed: int, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _list(tmp_path: Path, rows: list[dict], name: str = "val.csv") -> Path:
    path = tmp_path / name
    if name.endswith(".csv"):
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sources(**cfg):
    return sources_from_config(cfg.pop("key", "list"), OmegaConf.create(cfg))


# --- lists ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["val.csv", "val.jsonl"])
def test_a_list_gives_paths_targets_boxes_and_names_relative_to_the_file(tmp_path, name):
    for k in range(3):
        _png(tmp_path / "img" / f"{k}.png", k)
    rows = [{"path": "img/0.png", "target": 3, "box": "1,2,10,12", "name": "first"},
            {"path": "img/1.png", "target": "tabby"},
            {"path": str(tmp_path / "img" / "2.png")}]
    if name.endswith(".csv"):
        rows[1]["box"] = rows[2]["box"] = ""
    src = _sources(source="list", path=str(_list(tmp_path, rows, name)))
    assert [s.name for s in src] == ["first", "1", "2"]
    assert [s.default_target for s in src] == [3, "tabby", None]
    assert src[0].box == (1.0, 2.0, 10.0, 12.0) and src[1].box is None
    img, sha = src[1].read()
    assert img.size == (24, 24) and len(sha) == 64


def test_a_list_is_read_lazily(tmp_path, monkeypatch):
    _png(tmp_path / "a.png", 0)
    path = tmp_path / "big.csv"
    path.write_text("path,target\n" + "a.png,1\n" * 50_000)
    opened = []
    monkeypatch.setattr(images_mod, "read_image", lambda *a, **k: opened.append(a))
    src = _sources(source="list", path=str(path))
    assert len(src) == 50_000 and opened == []


@pytest.mark.parametrize("content, message", [
    ("file,target\na.png,1\n", "no path column"),
    ("path,label\na.png,1\n", "unknown column(s) label"),
    ("path,box\na.png,\"5,5,1,1\"\n", "x0 < x1"),
    ("path\n\n", "lists no images"),
])
def test_bad_lists_name_the_key_and_the_row(tmp_path, content, message):
    path = tmp_path / "v.csv"
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        _sources(source="list", path=str(path))
    assert message in str(e.value) and "image.list.path" in str(e.value)


def test_shuffle_and_limit_are_seeded(tmp_path):
    path = _list(tmp_path, [{"path": f"{k}.png"} for k in range(20)])
    a = [s.name for s in _sources(source="list", path=str(path), shuffle=True, seed=3, limit=5)]
    b = [s.name for s in _sources(source="list", path=str(path), shuffle=True, seed=3, limit=5)]
    c = [s.name for s in _sources(source="list", path=str(path), shuffle=True, seed=4, limit=5)]
    assert a == b and a != c and len(a) == 5
    assert [s.name for s in _sources(source="list", path=str(path), limit=3)] == ["0", "1", "2"]


def test_class_names_resolve_against_the_model_and_unknown_ones_are_refused(tmp_path):
    path = _list(tmp_path, [{"path": "a.png", "target": "Tabby"}, {"path": "b.png", "target": "tiger cat"},
                            {"path": "c.png", "target": 2}])
    names = ["tench", "goldfish", "great white shark", "tabby, tabby cat", "tiger cat"]
    src = resolve_labels(_sources(source="list", path=str(path)), names, 5)
    assert [s.default_target for s in src] == [3, 4, 2]
    bad = _list(tmp_path, [{"path": "a.png", "target": "tabyy"}], "bad.csv")
    with pytest.raises(ConfigError, match="tabyy.*close class names: tabby"):
        resolve_labels(_sources(source="list", path=str(bad)), names, 5)
    with pytest.raises(ConfigError, match="out of range"):
        resolve_labels(_sources(source="list", path=str(_list(tmp_path, [{"path": "a.png", "target": 9}], "o.csv"))), names, 5)


# --- folders ----------------------------------------------------------------------------------

def test_folder_recursive_glob_and_subfolder_labels(tmp_path):
    for cls, n in (("cat", 2), ("dog", 3)):
        for k in range(n):
            _png(tmp_path / "d" / cls / f"{k}.png", k)
    _png(tmp_path / "d" / ".hidden" / "0.png", 9)
    folder = str(tmp_path / "d")
    with pytest.raises(ConfigError, match="recursive=true"):
        _sources(key="folder", source="folder", path=folder)
    every = _sources(key="folder", source="folder", path=folder, recursive=True)
    assert [s.name for s in every] == ["cat_0", "cat_1", "dog_0", "dog_1", "dog_2"]
    assert [s.name for s in _sources(key="folder", source="folder", path=folder, glob="dog/*.png")] == ["dog_0", "dog_1", "dog_2"]
    labelled = _sources(key="folder", source="folder", path=folder, label_from="subfolder")
    assert [s.default_target for s in labelled] == ["cat", "cat", "dog", "dog", "dog"]
    (tmp_path / "d" / "class_index.json").write_text(json.dumps({"281": ["n02123045", "cat"], "207": ["n02099601", "dog"]}))
    labelled = _sources(key="folder", source="folder", path=folder, label_from="subfolder")
    assert [s.default_target for s in labelled] == [281, 281, 207, 207, 207]
    assert len(_sources(key="folder", source="folder", path=folder, recursive=True, limit=2, shuffle=True)) == 2


# --- end to end -------------------------------------------------------------------------------

def _dataset(tmp_path: Path, n: int) -> Path:
    rows = [{"path": f"img/{k}.png", "target": k % 7 * 100} for k in range(n)]
    for k in range(n):
        _png(tmp_path / "img" / f"{k}.png", k, size=40)
    return _list(tmp_path, rows)


SMALL = ["model.preprocess.input_size=96"]


@pytest.mark.slow
def test_a_batched_list_run_equals_one_image_at_a_time(tmp_path):
    csv = _dataset(tmp_path, 7)  # seven targets; batch_size=4 gives a full batch and a partial one
    args = ["image=list", f"image.list.path={csv}", "method=[gradcam,vanilla_backprop,smoothgrad]",
            "method.smoothgrad.n_samples=3", "metrics=[deletion]", "metrics.deletion.steps=4", *SMALL]
    runs = {}
    for b in (1, 4):
        out = tmp_path / f"b{b}"
        proc = run_cli([*args, f"batch_size={b}"], out, tmp_path / "cache")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[b] = pd.read_csv(out / "manifest.csv").sort_values(["image", "method", "layer"]).reset_index(drop=True)
    one, four = runs[1], runs[4]
    assert len(one) == 7 * 3 and (one["status"] == "ok").all() and (four["status"] == "ok").all()
    assert sorted(one["target"].unique().tolist()) == [0, 100, 200, 300, 400, 500, 600]
    assert one[["image", "method", "target"]].equals(four[["image", "method", "target"]])
    for col in ("file_npy", "file_npy_upsampled"):
        for a, b in zip(one[col], four[col]):
            if isinstance(a, str):
                x, y = np.load(tmp_path / "b1" / a), np.load(tmp_path / "b4" / b)
                # float32 convolutions round differently for 1 and 4 images; Grad-CAM's channel sums cancel,
                # so the tolerance follows the map's scale
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4 * (np.abs(x).max() or 1))
    # deletion ranks pixels: two pixels whose values agree to float rounding may swap places, which moves
    # the curve by a few pixels' worth (the AUCs here are ~1e-4 to 1e-2 on random images)
    np.testing.assert_allclose(one["deletion_auc"], four["deletion_auc"], rtol=0.02, atol=1e-4)


@pytest.mark.slow
def test_target_label_and_a_missing_file_fail_only_their_items(tmp_path):
    csv = _dataset(tmp_path, 5)
    frame = pd.read_csv(csv)
    frame.loc[1, "target"] = None
    frame.loc[2, "path"] = "img/missing.png"
    frame.to_csv(csv, index=False)
    out = tmp_path / "run"
    proc = run_cli(["image=list", f"image.list.path={csv}", "method=vanilla_backprop", "target=label", "batch_size=4",
                    *SMALL], out, tmp_path / "cache")
    assert proc.returncode == 3, proc.stderr[-3000:]
    m = pd.read_csv(out / "manifest.csv").set_index("image")
    assert m.loc["1", "status"] == "error" and "has no label" in m.loc["1", "error"]
    assert m.loc["missing", "status"] == "error" and "missing.png" in m.loc["missing", "error"]
    assert (m.drop(["1", "missing"])["status"] == "ok").all()
    assert m.loc["3", "target"] == 300 and m.loc["4", "target"] == 400


@pytest.mark.slow
def test_shards_split_a_list_and_keep_its_names(tmp_path):
    csv = _dataset(tmp_path, 7)
    seen = []
    for shard in range(3):
        out = tmp_path / f"s{shard}"
        proc = run_cli(["image=list", f"image.list.path={csv}", "method=vanilla_backprop", "shards=3", f"shard={shard}",
                        *SMALL], out, tmp_path / "cache")
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen.append(pd.read_csv(out / "manifest.csv")["image"].astype(str).tolist())
    assert seen == [["0", "3", "6"], ["1", "4"], ["2", "5"]]


@pytest.mark.slow
def test_memory_stays_bounded_over_a_long_list(tmp_path):
    """500 tiny images: the peak RSS is that of a 50-image run plus a little (the manifest's rows),
    not one that grows with every image."""
    n_big = 500
    rows = [{"path": "img/a.png" if k % 2 else "img/b.png", "name": f"i{k}", "target": k % 10} for k in range(n_big)]
    _png(tmp_path / "img" / "a.png", 1, size=16)
    _png(tmp_path / "img" / "b.png", 2, size=16)
    peaks = {}
    for n in (50, n_big):
        csv = _list(tmp_path, rows[:n], f"l{n}.csv")
        code = (
            "import resource, sys, runpy; sys.argv = sys.argv[1:];"
            "exec('try:\\n runpy.run_path(sys.argv[0], run_name=\"__main__\")\\nexcept SystemExit as e:\\n code = e.code');"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        )
        out = tmp_path / f"r{n}"
        proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "run.py"), "image=list", f"image.list.path={csv}",
                               "method=vanilla_backprop", "model.preprocess.input_size=32", "render.alpha=0.4",
                               f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
        assert "PEAK" in proc.stdout, proc.stderr[-3000:]
        peaks[n] = int(proc.stdout.split("PEAK")[-1].split()[0]) / 1024  # MiB
        assert len(pd.read_csv(out / "manifest.csv")) == n
    assert peaks[n_big] < peaks[50] + 60, peaks


# --- the batching keys: a clear error naming the key, and nothing touched -----------------------

@pytest.mark.parametrize("overrides, expected", [
    ({"batch_size": 0}, "batch_size=0 is out of range"),
    ({"batch_size": "many"}, "batch_size"),
    ({"shards": 0}, "shards=0 is out of range"),
    ({"shards": 2, "shard": 2}, "shard=2: must be below shards=2"),
    ({"shard": -1}, "shard=-1 is out of range"),
    ({"precision": "fp8"}, "precision"),
    ({"precision": "fp16"}, "precision=fp16 needs device=cuda"),
])
def test_batching_keys_are_checked_with_the_key_named(overrides, expected):
    import torch

    from cnnviz.app.plan import check_batching

    cfg = OmegaConf.create({"batch_size": 16, "shards": 1, "shard": 0, "precision": "fp32", **overrides})
    with pytest.raises(ConfigError) as e:
        check_batching(cfg, torch.device("cpu"))
    assert expected in str(e.value), str(e.value)


@pytest.mark.slow
def test_a_bad_batching_key_leaves_an_existing_archive_unchanged(tmp_path):
    from conftest import sha

    csv = _dataset(tmp_path, 3)
    out = tmp_path / "run"
    args = ["image=list", f"image.list.path={csv}", "method=vanilla_backprop", *SMALL]
    assert run_cli(args, out, tmp_path / "cache").returncode == 0
    def files():  # run.log records the refused attempts; the lock is the folder's, not the archive's
        return {p: (p.stat().st_mtime_ns, sha(p)) for p in out.rglob("*")
                if p.is_file() and p.name not in ("run.log", ".cnnviz.lock")}

    before = files()
    for bad in ("batch_size=0", "shard=5", "precision=fp16"):
        proc = run_cli([*args, bad, "resume=true"], out, tmp_path / "cache")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert bad.split("=")[0] in proc.stderr and "Traceback" not in proc.stderr
    assert files() == before
    # a different batch size may resume the same archive: it recomputes nothing
    proc = run_cli([*args, "batch_size=2", "resume=true"], out, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    frame = pd.read_csv(out / "manifest.csv")
    assert len(frame) == 3 and (frame.status == "ok").all()
