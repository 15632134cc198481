"""Sweeps end to end: multirun job folders, the merged manifest and gallery, many items from one
model load, kill-and-resume, ``cnnviz.verify``, the launchers, ``scripts/status.py``, ``explain()``
against the runner, layer patterns, and ``scripts/list_layers.py``.

Subprocesses run ``python run.py`` as a user types it (``conftest.run_cli``). Most runs use the
default model (efficientnet_lite0, embedded weights: offline, ~1 s to build); vgg19 appears only
where the behaviour is about vgg19 (its random initialisation alone takes several seconds).
"""
from __future__ import annotations

import dataclasses
import html
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, TinyCNN, needs_shared_images, ok, one_thread_everywhere, run_cli, sha

CONF = ROOT / "conf"
#: efficientnet_lite0 layers with (B, C, H, W) outputs, for a three-job sweep.
LAYERS = ("blocks.4", "blocks.5", "bn2")
#: The files README promises for a Grad-CAM row (besides the input picture).
CAM_KINDS = ("cam_gray", "cam_heatmap", "cam_on_image", "npy", "npy_upsampled")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread here and in every child process: on a busy 2-core machine two OpenMP
    threads per process slow a forward pass down ~40x (measured); the results are the same."""
    with one_thread_everywhere():
        yield


# --- helpers ---------------------------------------------------------------------------------------


def file_cols(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("file_")]


def job_dirs(sweep: Path) -> set[str]:
    return {p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")}


def script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *([str(ROOT / "scripts" / name)] if name.endswith(".py") else ["-m", name]), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def status_totals(text: str) -> dict[str, int]:
    m = re.search(r"total: (\d+) done, (\d+) failed, (\d+) pending; (\d+) job\(s\) started(?:, (\d+) not started)?", text)
    assert m, text
    return {"done": int(m[1]), "failed": int(m[2]), "pending": int(m[3]), "started": int(m[4]), "not_started": int(m[5] or 0)}


def loads_whole(path: Path) -> None:
    """Raise unless ``path`` is a complete file of its kind."""
    if path.suffix == ".png":
        with Image.open(path) as im:
            im.load()
    elif path.suffix == ".npy":
        np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        pd.read_csv(path)
    elif path.suffix == ".json":
        json.loads(path.read_text())


def compose_cfg(overrides):
    from hydra import compose, initialize_config_dir

    from cnnviz.app.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


class ImgSrc(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs.get("src"))
        for key in ("href", "src"):
            if attrs.get(key):
                self.links.append(attrs[key])


def parse_html(path: Path) -> ImgSrc:
    p = ImgSrc()
    p.feed(path.read_text())
    return p


def verify_lines(text: str) -> list[tuple[str, str, str]]:
    out = []
    for line in text.splitlines():
        m = re.match(r"^(identical|different|missing)\s+(.+?)(?:  \((.*)\))?$", line)
        if m:
            out.append((m[1], m[2], m[3] or ""))
    return out


# --- 1. a multirun sweep: job folders, merged manifest, gallery, merge_manifest.py ---------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, image_cache):
    base = tmp_path_factory.mktemp("sweep")
    d = base / "multirun"
    proc = ok(run_cli(["-m", "method=gradcam", f"layer={','.join(LAYERS)}", "image=rocket"], base / "run", image_cache,
                      multirun_dir=d))
    return SimpleNamespace(dir=d, out=proc.stdout + proc.stderr)


@pytest.mark.slow  # end to end: run.py / script processes
def test_sweep_job_folders_are_named_from_the_overrides(sweep):
    # hydra.job.override_dirname: the job's overrides sorted by key, joined with commas
    expected = {f"image=rocket,layer={layer},method=gradcam" for layer in LAYERS}
    assert job_dirs(sweep.dir) == expected
    for layer in LAYERS:
        job = sweep.dir / f"image=rocket,layer={layer},method=gradcam"
        assert sorted(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())) == sorted(
            ["method=gradcam", f"layer={layer}", "image=rocket"])
        rows = pd.read_csv(job / "manifest.csv")
        assert list(rows.layer) == [layer] and list(rows.status) == ["ok"]


@pytest.mark.slow  # end to end: run.py / script processes
def test_sweep_root_has_merged_manifest_index_and_contact_sheet(sweep):
    merged = pd.read_csv(sweep.dir / "manifest.csv")
    assert len(merged) == 3 and "job" in merged.columns
    assert set(merged.job) == job_dirs(sweep.dir)
    assert sorted(merged.layer) == sorted(LAYERS) and set(merged.status) == {"ok"}
    for _, row in merged.iterrows():
        assert row.job == f"image=rocket,layer={row.layer},method=gradcam"
        job_row = pd.read_csv(sweep.dir / row.job / "manifest.csv").iloc[0]
        for kind in CAM_KINDS + ("input",):
            rel = row[f"file_{kind}"]
            assert not Path(rel).is_absolute() and rel == f"{row.job}/{job_row[f'file_{kind}']}"
            assert (sweep.dir / rel).is_file(), rel
            assert sha(sweep.dir / rel) == row[f"sha256_{kind}"] == job_row[f"sha256_{kind}"]
    assert (sweep.dir / "index.html").is_file()
    with Image.open(sweep.dir / "contact_sheet.png") as im:
        im.load()
        assert im.width > 200 and im.height > 100
    # written once, by the end-of-multirun callback, after all three jobs
    assert len(re.findall(r"merged 3 job manifest\(s\), 3 rows", sweep.out)) == 1
    newest_job = max((sweep.dir / j / "manifest.csv").stat().st_mtime_ns for j in job_dirs(sweep.dir))
    assert (sweep.dir / "manifest.csv").stat().st_mtime_ns >= newest_job


@pytest.mark.slow  # end to end: run.py / script processes
def test_merge_manifest_script_rebuilds_the_root_files(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep.dir, copy)
    for name in ("manifest.csv", "index.html", "contact_sheet.png"):
        (copy / name).unlink()
    proc = ok(script("merge_manifest.py", str(copy)))
    assert "3 rows from 3 job(s)" in proc.stdout
    assert (copy / "manifest.csv").read_text() == (sweep.dir / "manifest.csv").read_text()
    assert (copy / "index.html").read_text() == (sweep.dir / "index.html").read_text()
    with Image.open(copy / "contact_sheet.png") as a, Image.open(sweep.dir / "contact_sheet.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


# --- 6. the gallery ----------------------------------------------------------------------------


@pytest.mark.slow  # end to end: run.py / script processes
def test_gallery_links_are_relative_and_every_image_exists(sweep):
    pages = [sweep.dir / "index.html"] + [sweep.dir / j / "index.html" for j in job_dirs(sweep.dir)]
    for page in pages:
        text = page.read_text()
        assert "http" not in text and str(sweep.dir) not in text and "file:" not in text
        parsed = parse_html(page)
        for link in parsed.links:
            assert not link.startswith(("/", "\\")) and "://" not in link, link
        for src in parsed.srcs:
            assert (page.parent / html.unescape(src)).is_file(), (page, src)
    root = parse_html(sweep.dir / "index.html")
    assert len(root.srcs) == 1 + len(LAYERS)  # the input, then one cell per job
    assert sum(src.endswith("_cam_on_image.png") for src in root.srcs) == len(LAYERS)


def _screenshot(url: str, out: Path, profile: Path) -> np.ndarray:
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", f"--screenshot={out}",
         "--window-size=1400,900", "--hide-scrollbars", url],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert out.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    with Image.open(out) as im:
        return np.asarray(im.convert("HSV"))


def _colourful(hsv: np.ndarray) -> int:
    return int(((hsv[..., 1] > 128) & (hsv[..., 2] > 100)).sum())


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless chromium is not installed (CI installs it: .ci/run)")
def test_gallery_renders_in_headless_chromium(sweep, tmp_path):
    page = sweep.dir / "index.html"
    shown = _screenshot(page.as_uri(), tmp_path / "shown.png", tmp_path / "profile1")
    broken_page = tmp_path / "broken.html"
    broken_page.write_text(re.sub(r'src="[^"]*"', 'src="nowhere/missing.png"', page.read_text()))
    broken = _screenshot(broken_page.as_uri(), tmp_path / "broken.png", tmp_path / "profile2")
    assert shown.shape == broken.shape
    # three 180 px jet overlays are ~97k pixels, most of them saturated; a page of broken images
    # is black text on white with small icons
    assert _colourful(shown) > 20_000, _colourful(shown)
    assert _colourful(broken) < 2_000, _colourful(broken)
    assert np.abs(shown.astype(int) - broken.astype(int)).sum(axis=-1).astype(bool).mean() > 0.05


# --- 7. status of a finished sweep ---------------------------------------------------------------


@pytest.mark.slow  # end to end: run.py / script processes
def test_status_of_a_finished_sweep(sweep):
    proc = ok(script("status.py", str(sweep.dir)))
    assert status_totals(proc.stdout) == {"done": 3, "failed": 0, "pending": 0, "started": 3, "not_started": 0}
    for job in job_dirs(sweep.dir):
        assert re.search(rf"^{re.escape(job)}\s+1\s+0\s+0$", proc.stdout, re.M), proc.stdout


# --- 4. cnnviz.verify ----------------------------------------------------------------------------------


@pytest.mark.slow  # end to end: run.py / script processes
def test_verify_a_fresh_sweep_reports_every_file_identical(sweep):
    proc = script("cnnviz.verify", str(sweep.dir), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = verify_lines(proc.stdout)
    frames = [pd.read_csv(sweep.dir / j / "manifest.csv") for j in job_dirs(sweep.dir)]
    archived = sum(int(f[file_cols(f)].notna().sum().sum()) for f in frames)
    assert archived == 3 * (len(CAM_KINDS) + 1)
    assert len(lines) == archived and {v for v, _, _ in lines} == {"identical"}
    for job in job_dirs(sweep.dir):  # every job was checked
        assert sum(job in path for _, path, _ in lines) == len(CAM_KINDS) + 1
    assert "3 job(s), 0 file(s) not identical" in proc.stdout


@pytest.fixture
def job_copy(sweep, tmp_path):
    job = tmp_path / "job"
    shutil.copytree(sweep.dir / "image=rocket,layer=bn2,method=gradcam", job)
    return job


def run_verify(capsys, *argv) -> tuple[int, list[tuple[str, str, str]], str]:
    from cnnviz.app.verify import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr().out
    return rc, verify_lines(out), out


@pytest.mark.slow  # end to end: run.py / script processes
def test_verify_reports_a_changed_npy_with_its_max_abs_diff(job_copy, capsys):
    raw = job_copy / "rocket_gradcam_bn2.npy"
    np.save(raw, np.load(raw) + np.float32(0.5))
    rc, lines, out = run_verify(capsys, job_copy)
    assert rc == 1
    bad = [(v, p, d) for v, p, d in lines if v != "identical"]
    assert len(bad) == 1 and bad[0][0] == "different" and bad[0][1].endswith("rocket_gradcam_bn2.npy"), out
    diff = float(re.fullmatch(r"max abs diff (\S+)", bad[0][2])[1])
    assert diff == pytest.approx(0.5, abs=1e-3)
    assert "1 file(s) not identical" in out


@pytest.mark.slow  # end to end: run.py / script processes
def test_verify_reports_a_deleted_png_as_missing(job_copy, capsys):
    (job_copy / "rocket_gradcam_bn2_cam_on_image.png").unlink()
    rc, lines, out = run_verify(capsys, job_copy)
    assert rc == 1
    bad = [(v, p) for v, p, _ in lines if v != "identical"]
    assert bad == [("missing", str(job_copy / "rocket_gradcam_bn2_cam_on_image.png"))], out


@pytest.mark.slow  # end to end: run.py / script processes
def test_verify_atol_accepts_a_small_npy_perturbation(job_copy, capsys):
    raw = job_copy / "rocket_gradcam_bn2_upsampled.npy"
    np.save(raw, np.load(raw) + np.float32(1e-4))
    # an archive made where the array came out so (a GPU) records its own bytes; a file changed after
    # the run is different whatever --atol (tests/test_trust_archive.py)
    frame = pd.read_csv(job_copy / "manifest.csv")
    frame["sha256_npy_upsampled"] = sha(raw)
    frame.to_csv(job_copy / "manifest.csv", index=False)
    rc, lines, out = run_verify(capsys, job_copy)
    assert rc == 1 and [v for v, p, _ in lines if p.endswith("_upsampled.npy")] == ["different"], out
    rc, lines, out = run_verify(capsys, job_copy, "--atol", "0.01")
    assert rc == 0, out
    assert {v for v, _, _ in lines} == {"identical"}
    detail = [d for _, p, d in lines if p.endswith("_upsampled.npy")][0]
    assert float(re.fullmatch(r"max abs diff (\S+)", detail)[1]) == pytest.approx(1e-4, rel=0.05)


# --- 2. many items, one job, one model load -------------------------------------------------------


@pytest.mark.slow  # end to end: run.py / script processes
@needs_shared_images
def test_twelve_items_in_one_job_load_the_model_once(tmp_path, image_cache):
    methods = ["vanilla_backprop", "guided_backprop", "gradcam", "guided_gradcam"]
    images = ["snake", "cat_dog", "spider"]
    proc = ok(run_cli([f"method=[{','.join(methods)}]", f"image=[{','.join(images)}]"], tmp_path, image_cache))
    out = proc.stdout + proc.stderr
    assert "reusing the cached model" not in out
    assert len(re.findall(r"12 calls: 3 image\(s\) x 4 method\(s\) x 1 target\(s\)", out)) == 1
    rows = pd.read_csv(tmp_path / "manifest.csv")
    assert len(rows) == 12 and set(rows.status) == {"ok"}
    assert sorted(zip(rows.image, rows.method)) == sorted((i, m) for i in images for m in methods)
    assert rows.image_sha256.nunique() == 3


def test_many_items_in_process_build_the_model_once(tmp_path, monkeypatch):
    from cnnviz.app import plan
    from cnnviz.app.runner import run

    calls = []
    real = plan._load_model
    monkeypatch.setattr(plan, "_MODELS", {})
    monkeypatch.setattr(plan, "_load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    frame = run(compose_cfg(["method=[vanilla_backprop,gradcam]", "image=[rocket,coffee]"]), tmp_path)
    assert len(calls) == 1
    assert len(frame) == 4 and set(frame.status) == {"ok"}


# --- 3 and 7. kill a sweep, then resume it ---------------------------------------------------------

# batch_size=1: a row per image, so the kill after the first row lands inside a job (a batch of
# three would write all three rows of the first job at once)
KILL_ARGS = ["-m", "method=gradcam,layercam", "image=[rocket,coffee,chelsea]", "batch_size=1"]
KILL_JOBS = {"image=[rocket,coffee,chelsea],method=gradcam", "image=[rocket,coffee,chelsea],method=layercam"}


def _rows(path: Path) -> int:
    try:
        return len(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


@pytest.fixture(scope="module")
def killed(tmp_path_factory, image_cache):
    """A two-job sweep SIGKILLed once its first row is written; a copy of the folder as the kill
    left it; then the same command with resume=true into the same folder."""
    base = tmp_path_factory.mktemp("kill")
    sweep = base / "multirun"
    env = {**os.environ, "CNNVIZ_HOME": str(image_cache), "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "run.py"), *KILL_ARGS, f"hydra.run.dir={base / 'run'}", f"hydra.sweep.dir={sweep}"]
    with open(base / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not any(_rows(p) for p in sweep.glob("*/manifest.csv")):
                assert proc.poll() is None, "the sweep ended before it could be killed:\n" + (base / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no manifest row after 240 s"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    snapshot = base / "as_killed"
    shutil.copytree(sweep, snapshot)
    done = {}  # file -> (mtime_ns, sha256) for every file of every row written before the kill
    for manifest in sweep.glob("*/manifest.csv"):
        frame = pd.read_csv(manifest)
        for col in file_cols(frame):
            for rel in frame[col].dropna():
                path = manifest.parent / rel
                done[path] = (path.stat().st_mtime_ns, sha(path))
    rows_at_kill = {m.parent.name: _rows(m) for m in sweep.glob("*/manifest.csv")}
    # resumed with the default batch size: batch_size may differ between runs into one folder and
    # is not part of a job folder's name
    resumed = run_cli([*KILL_ARGS[:-1], "resume=true"], base / "run", image_cache, multirun_dir=sweep)
    return SimpleNamespace(sweep=sweep, snapshot=snapshot, returncode=proc.returncode, done=done,
                           rows_at_kill=rows_at_kill, resumed=resumed, killed_log=(base / "killed.log").read_text())


@pytest.mark.slow  # end to end: run.py / script processes
def test_killed_sweep_stopped_midway(killed):
    assert killed.returncode == -signal.SIGKILL
    assert killed.rows_at_kill and 1 <= sum(killed.rows_at_kill.values()) < 6
    assert not (killed.snapshot / "manifest.csv").exists()  # the end-of-multirun merge never ran


@pytest.mark.slow  # end to end: run.py / script processes
def test_killed_sweep_leaves_only_whole_files(killed):
    manifests = list(killed.snapshot.glob("*/manifest.csv"))
    assert manifests
    for manifest in manifests:
        frame = pd.read_csv(manifest)
        assert set(frame.status) == {"ok"}
        for _, row in frame.iterrows():
            for col in [c for c in file_cols(frame) if isinstance(row[c], str)]:
                path = manifest.parent / row[col]
                loads_whole(path)
                assert sha(path) == row["sha256_" + col[5:]]
    for path in killed.snapshot.rglob("*"):
        if not path.is_file() or ".hydra" in path.parts:
            continue
        if path.suffix == ".tmp":
            # atomic_write's temporary: a kill inside a write can leave one, but only under a
            # hidden name, never in place of a real file
            assert path.name.startswith("."), path
            continue
        loads_whole(path)


@pytest.mark.slow  # end to end: run.py / script processes
def test_status_of_a_killed_sweep_counts_pending(killed):
    proc = ok(script("status.py", str(killed.snapshot)))
    totals = status_totals(proc.stdout)
    assert totals["done"] == sum(killed.rows_at_kill.values()) and totals["failed"] == 0
    assert totals["pending"] > 0
    assert totals["started"] + totals["not_started"] == 2


@pytest.mark.slow  # end to end: run.py / script processes
def test_resumed_sweep_has_every_item_once_in_the_same_folders(killed):
    ok(killed.resumed)
    # resume is excluded from override_dirname: the resumed jobs write into the killed job's folder
    assert job_dirs(killed.sweep) == KILL_JOBS
    assert set(killed.rows_at_kill) <= KILL_JOBS
    for job in KILL_JOBS:
        frame = pd.read_csv(killed.sweep / job / "manifest.csv")
        assert sorted(frame.image) == ["chelsea", "coffee", "rocket"] and set(frame.status) == {"ok"}
    merged = pd.read_csv(killed.sweep / "manifest.csv")
    assert len(merged) == 6 and set(merged.status) == {"ok"}
    assert not merged.duplicated(["image", "model", "weights", "method", "layer", "params", "target_request"]).any()
    assert set(merged.job) == KILL_JOBS
    for rel in merged[file_cols(merged)].stack():
        loads_whole(killed.sweep / rel)
    totals = status_totals(ok(script("status.py", str(killed.sweep))).stdout)
    assert totals == {"done": 6, "failed": 0, "pending": 0, "started": 2, "not_started": 0}


@pytest.mark.slow  # end to end: run.py / script processes
def test_resume_does_not_recompute_items_done_before_the_kill(killed):
    ok(killed.resumed)
    assert killed.done
    for path, (mtime, digest) in killed.done.items():
        assert sha(path) == digest
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was rewritten by the resume"
    out = killed.resumed.stdout + killed.resumed.stderr
    skipped = [int(n) for n in re.findall(r"resume: (\d+) \w+\(s\) already complete, skipped", out)]
    assert skipped == [n for n in killed.rows_at_kill.values() if n]


# --- resume, deterministically: a finished call is skipped ------------------------------------------


@pytest.mark.parametrize("method", ["vanilla_backprop", "gradcam"])  # without and with hyperparameters
def test_resume_skips_a_finished_call(method, tmp_path, caplog):
    from cnnviz.app.runner import run

    run(compose_cfg([f"method={method}", "image=rocket"]), tmp_path)
    row = pd.read_csv(tmp_path / "manifest.csv").iloc[0]
    before = {row[c]: (tmp_path / row[c]).stat().st_mtime_ns for c in row.index if c.startswith("file_") and isinstance(row[c], str)}
    assert len(before) >= 3
    caplog.set_level(logging.INFO, logger="cnnviz")
    frame = run(compose_cfg([f"method={method}", "image=rocket", "resume=true"]), tmp_path)
    assert len(frame) == 1 and frame.status.tolist() == ["ok"]
    assert re.search(r"resume: 1 \w+\(s\) already complete, skipped", caplog.text), caplog.text
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in before} == before


# --- resume after a kill inside a multi-layer call (simulated deterministically) -----------------------


@pytest.fixture(scope="module")
def multilayer(tmp_path_factory, image_cache):
    """One call serving three layers: three rows from one forward and backward pass."""
    d = tmp_path_factory.mktemp("multilayer")
    ok(run_cli(["method=gradcam", f"layer=[{','.join(LAYERS)}]", "image=rocket"], d, image_cache))
    return d


@pytest.fixture(scope="module")
def partial_resume(multilayer, tmp_path_factory):
    """The state a kill after the first of three rows leaves (one manifest row, the other layers'
    files not yet written, a temporary file cut short), then resume=true into it."""
    from omegaconf import OmegaConf

    from cnnviz.app.runner import run

    d = tmp_path_factory.mktemp("partial") / "run"
    shutil.copytree(multilayer, d)
    frame = pd.read_csv(d / "manifest.csv")
    assert list(frame.layer) == list(LAYERS)
    for _, row in frame.iloc[1:].iterrows():
        for kind in CAM_KINDS:
            (d / row[f"file_{kind}"]).unlink()
    frame.iloc[:1].to_csv(d / "manifest.csv", index=False)
    stale = d / f".{frame.file_npy.iloc[1]}.k1ll3d.tmp"
    stale.write_bytes(b"\x93NUMPY\x01\x00half a header")
    kept = {d / frame.iloc[0][f"file_{k}"]: (d / frame.iloc[0][f"file_{k}"]).stat().st_mtime_ns for k in CAM_KINDS}
    time.sleep(0.01)
    cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
    cfg.resume = True
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("cnnviz")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = run(cfg, d)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return SimpleNamespace(dir=d, frame=result, kept=kept, stale=stale, log="\n".join(messages))


@pytest.mark.slow  # end to end: run.py / script processes
def test_resume_completes_a_call_killed_between_its_layers(partial_resume, multilayer):
    frame = pd.read_csv(partial_resume.dir / "manifest.csv")
    assert sorted(frame.layer) == sorted(LAYERS) and set(frame.status) == {"ok"} and len(frame) == 3
    full = pd.read_csv(multilayer / "manifest.csv").set_index("layer")
    for _, row in frame.iterrows():
        for kind in CAM_KINDS:
            assert sha(partial_resume.dir / row[f"file_{kind}"]) == full.loc[row.layer, f"sha256_{kind}"]


@pytest.mark.slow  # end to end: run.py / script processes
def test_resume_keeps_the_layers_finished_before_the_kill(partial_resume):
    assert re.search(r"resume: 1 \w+\(s\) already complete, skipped", partial_resume.log), partial_resume.log
    for path, mtime in partial_resume.kept.items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was recomputed"


@pytest.mark.slow  # end to end: run.py / script processes
def test_resume_removes_temporary_files_a_kill_left(partial_resume):
    assert not list(partial_resume.dir.rglob("*.tmp"))


# --- 5. launchers ------------------------------------------------------------------------------------


def _two_job_sweep(launcher: str, tmp_path: Path, cache: Path) -> Path:
    d = tmp_path / "multirun"
    ok(run_cli(["-m", f"hydra/launcher={launcher}", "method=gradcam,layercam", "image=rocket"], tmp_path / "run", cache,
               multirun_dir=d, timeout=400))
    assert job_dirs(d) == {"image=rocket,method=gradcam", "image=rocket,method=layercam"}
    merged = pd.read_csv(d / "manifest.csv")
    assert sorted(merged.method) == ["gradcam", "layercam"] and set(merged.status) == {"ok"}
    assert set(merged.job) == job_dirs(d)
    for rel in merged[file_cols(merged)].stack():
        assert (d / rel).is_file()
    assert (d / "index.html").is_file() and (d / "contact_sheet.png").is_file()
    return d


@pytest.mark.slow  # end to end: run.py / script processes
def test_joblib_launcher_runs_a_two_job_sweep(tmp_path, image_cache):
    _two_job_sweep("joblib", tmp_path, image_cache)


# two fresh submitit processes, each importing torch: 10-16 s on 2 cores, not marked slow
@pytest.mark.slow  # end to end: run.py / script processes
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path, image_cache):
    d = _two_job_sweep("submitit_local", tmp_path, image_cache)
    assert (d / ".submitit").is_dir()


@pytest.mark.slow  # end to end: run.py / script processes
def test_slurm_launcher_composes(tmp_path, image_cache):
    # run_cli appends hydra.run.dir=..., which argparse refuses after --cfg: call run.py directly
    proc = ok(subprocess.run([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={tmp_path}", "hydra/launcher=slurm",
                              "--cfg", "hydra"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL))
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1
    assert not (tmp_path / "manifest.csv").exists()


# --- 8. explain() from a notebook writes what the runner writes ---------------------------------------


def _efficientnet():
    from cnnviz.models.loaders import efficientnet_lite0

    return efficientnet_lite0().module


def _lite0_preprocess():
    from cnnviz.api import Preprocess

    # conf/model/efficientnet_lite0.yaml: mean = std = 0.5; the other keys are explain's defaults
    return Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _rocket() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.rocket())


def _same_as_runner(saved: Path, runner: Path) -> None:
    ours, theirs = pd.read_csv(saved / "manifest.csv"), pd.read_csv(runner / "manifest.csv")
    assert list(ours.columns) == list(theirs.columns)
    assert len(ours) == len(theirs)
    for (_, a), (_, b) in zip(ours.iterrows(), theirs.iterrows()):
        assert a.layer == b.layer and a.method == b.method and a.image == b.image
        assert a.target == b.target and a.predicted == b.predicted
        cols = sorted(c for c in theirs.columns if c.startswith("file_") and isinstance(b[c], str))
        assert {c: a[c] for c in cols} == {c: b[c] for c in cols}
        for c in cols:
            assert (saved / a[c]).is_file()
        assert a.sha256_npy == b.sha256_npy and a.sha256_npy_upsampled == b.sha256_npy_upsampled
        assert {c: a[c] for c in theirs.columns if c.startswith("sha256_")} == {c: b[c] for c in theirs.columns if c.startswith("sha256_")}


def test_cnnviz_explain_is_still_the_function_after_first_use():
    import importlib
    import inspect

    import cnnviz

    importlib.import_module("cnnviz.api")  # what explain()'s own lazy import and the runner do
    from cnnviz import explain

    assert not inspect.ismodule(explain) and callable(explain)
    assert callable(cnnviz.explain) and cnnviz.explain is cnnviz.api.explain


@pytest.mark.slow  # end to end: run.py / script processes
def test_explain_from_a_path_saves_what_the_runner_writes(sweep, tmp_path):
    from cnnviz.api import explain  # see test_cnnviz_explain_is_still_the_function_after_first_use

    path = tmp_path / "rocket.png"
    _rocket().save(path)
    ex = explain(_efficientnet(), path, method="gradcam", layer="bn2", preprocess_config=_lite0_preprocess(),
                 fast_copy=True)  # as the runner's fast_copy: true
    out = tmp_path / "saved"
    rows = ex.save(out)
    assert len(rows) == 1
    _same_as_runner(out, sweep.dir / "image=rocket,layer=bn2,method=gradcam")


@pytest.mark.slow  # end to end: run.py / script processes
def test_explain_a_list_of_layers_saves_what_the_runner_writes(multilayer, tmp_path):
    from cnnviz.api import explain  # see test_cnnviz_explain_is_still_the_function_after_first_use

    ex = explain(_efficientnet(), _rocket(), method="gradcam", layer=list(LAYERS), preprocess_config=_lite0_preprocess(),
                 name="rocket", fast_copy=True)  # as the runner's fast_copy: true
    ex.save(tmp_path)
    _same_as_runner(tmp_path, multilayer)


@pytest.mark.slow  # end to end: run.py / script processes
def test_explain_tensor_input_gives_the_same_raw_map_and_show_draws_a_figure(multilayer, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from cnnviz.api import explain  # see test_cnnviz_explain_is_still_the_function_after_first_use
    from cnnviz.data.images import preprocess

    x, _ = preprocess(_rocket().convert("RGB"), _lite0_preprocess())
    ex = explain(_efficientnet(), x, method="gradcam", layer=list(LAYERS), preprocess_config=_lite0_preprocess(), name="rocket",
                 fast_copy=True)  # as the runner's fast_copy: true
    runner = pd.read_csv(multilayer / "manifest.csv").set_index("layer")
    for row in ex.save(tmp_path):
        assert row["sha256_npy"] == runner.loc[row["layer"], "sha256_npy"]
    fig = ex.show()
    try:
        assert isinstance(fig, Figure)
        assert len(fig.axes) == len(LAYERS) * 4  # the input, then cam_gray, cam_heatmap, cam_on_image
    finally:
        plt.close(fig)


# --- 9. layer patterns -----------------------------------------------------------------------------

#: torchvision VGG-19 ``features``: 16 convolutions, each followed by a ReLU, five max-pools.
VGG19_CONVS = [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)]


@pytest.mark.slow  # end to end: run.py / script processes
def test_type_conv2d_on_vgg19_gives_sixteen_rows(tmp_path, image_cache):
    # a 64 px input: the pattern's expansion does not depend on the size, the compute is a twelfth of 224 px
    proc = ok(run_cli(["model=vgg19", "model.weights=null", "layer=type:Conv2d", "image=rocket", "model.preprocess.input_size=64"],
                      tmp_path, image_cache))
    assert "gradcam: layer pattern expanded to 16 layers" in proc.stdout + proc.stderr
    rows = pd.read_csv(tmp_path / "manifest.csv")
    assert list(rows.layer) == VGG19_CONVS and set(rows.status) == {"ok"}
    assert set(rows.layers_in_call) == {16}
    for rel in rows.file_npy:
        assert np.load(tmp_path / rel).ndim == 2


def test_layer_all_and_type_patterns_in_model_order():
    from cnnviz.core.errors import ConfigError
    from cnnviz.app.plan import expand_layer_pattern

    model = SimpleNamespace(module=TinyCNN(), name="tiny")
    assert expand_layer_pattern("all", model) == ["features.0", "features.1", "features.2", "features.3", "pool", "fc"]
    assert expand_layer_pattern("type:Conv2d", model) == ["features.0", "features.2"]
    assert expand_layer_pattern("type:_ConvNd", model) == ["features.0", "features.2"]  # subclasses count
    assert expand_layer_pattern("features.2", model) is None
    with pytest.raises(ConfigError, match=r"close matches: .*ReLU"):
        expand_layer_pattern("type:ReLu", model)


def test_layer_all_on_vgg19_keeps_the_layers_gradcam_can_use():
    from cnnviz.app.plan import build_plan

    plan = build_plan(compose_cfg(["model=vgg19", "model.weights=null", "layer=all", "image=rocket",
                                   "method=[gradcam,vanilla_backprop]"]))
    # every leaf module, minus the classifier's (B, N) outputs: features.0-36, then avgpool
    assert plan.layers["gradcam"] == [f"features.{i}" for i in range(37)] + ["avgpool"]
    assert plan.layers["vanilla_backprop"] == []


@pytest.mark.slow  # end to end: run.py / script processes
def test_unknown_layer_type_is_a_configuration_error_with_close_matches(tmp_path, image_cache):
    proc = run_cli(["layer=type:Conv2dd", "image=rocket"], tmp_path, image_cache)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"unknown module type 'Conv2dd'.*close matches: [^;]*\bConv2d\b", proc.stderr)
    assert not (tmp_path / "manifest.csv").exists()


# --- 10. list_layers.py --------------------------------------------------------------------------------


@pytest.mark.slow  # end to end: run.py / script processes
def test_list_layers_prints_vgg19_names_types_and_shapes():
    proc = ok(script("list_layers.py", "model=vgg19", "model.weights=null"))
    lines = proc.stdout.splitlines()
    # a 224 x 224 input: 512 channels at 1/16 before the last pool, 1/32 after it
    # features.35 is the ReLU after the last convolution (features.34), vgg19's default_layer
    assert [l for l in lines if re.match(r"^\s+features\.35\s", l)] == ["  features.35  ReLU  (1, 512, 14, 14)  <- default_layer"]
    assert "  features.34  Conv2d  (1, 512, 14, 14)" in lines
    assert "  features.36  MaxPool2d  (1, 512, 7, 7)" in lines
    assert "  classifier.6  Linear  (1, 1000)" in lines
    assert sum(bool(re.match(r"^\s+features\.\d+\s+Conv2d\s", l)) for l in lines) == 16


def test_finish_counts_jobs_that_wrote_no_row(tmp_path, capsys):
    """A job cancelled or killed before its first row (scancel, a node lost) leaves no manifest: the
    summary line says how many of the planned jobs are missing and the exit status is not 0."""
    from cnnviz.app import sweep as sweep_mod

    root = tmp_path / "sweep"
    job = root / "method=gradcam"
    job.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": [
        "method=gradcam,layercam,scorecam", "image=rocket"]}}}))
    pd.DataFrame([{"image": "rocket", "method": "gradcam", "layer": "bn2", "status": "ok", "error": ""}]).to_csv(
        job / "manifest.csv", index=False)
    saved = dataclasses.replace(sweep_mod.STARTED)
    try:
        sweep_mod.started(root, allow_failures=False)
        assert sweep_mod.finish(0) == 3
        line = capsys.readouterr().out
        assert "1 ok, 0 failed in 1 job(s); 2 of 3 job(s) wrote no row" in line and "status.py" in line
        sweep_mod.started(root, allow_failures=True)
        assert sweep_mod.finish(0) == 0
    finally:
        sweep_mod.STARTED.__dict__.update(saved.__dict__)
    assert sweep_mod.planned_jobs(root) == 3 and sweep_mod.planned_jobs(job) is None
