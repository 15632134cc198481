"""run.py end to end, as a user types it: outputs, manifest, sweeps, and every bad input."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import ROOT, needs_shared_images, run_cli

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.name not in ("run.log", ".cnnviz.lock")}


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def spider_run(tmp_path_factory, image_cache):
    run_dir = tmp_path_factory.mktemp("spider")
    if not (image_cache / "images" / "spider.png").exists():
        pytest.skip("../shared/images is not present")
    ok(run_cli(["method=gradcam", "image=spider"], run_dir, image_cache))
    return run_dir


@pytest.mark.slow  # end to end: run.py / script processes
@needs_shared_images
def test_gradcam_spider_writes_files_manifest_and_env(spider_run):
    for kind in ("cam_gray", "cam_heatmap", "cam_on_image"):
        assert (spider_run / f"spider_gradcam_bn2_{kind}.png").is_file()
    raw = np.load(spider_run / "spider_gradcam_bn2.npy")
    up = np.load(spider_run / "spider_gradcam_bn2_upsampled.npy")
    assert raw.shape == (7, 7) and up.shape == (224, 224) and raw.min() >= 0 and raw.max() > 0
    df = pd.read_csv(spider_run / "manifest.csv")
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.status, row.method, row.layer, row.image, row.model) == ("ok", "gradcam", "bn2", "spider", "efficientnet_lite0")
    assert row.target == 72 and row.predicted == 73 and row.predicted_name == "barn spider"
    assert row.image_sha256 == "85219491defd6907152ff2cb10773360e798793b29cf79c8da805e3f25c2e643"
    assert 0 < row.target_prob < row.predicted_prob <= 1 and row.duration_ms > 0
    assert json.loads(row.params) == {"relu": True}
    for col in [c for c in df.columns if c.startswith("file_") and isinstance(row[c], str)]:
        assert sha(spider_run / row[col]) == row["sha256_" + col[5:]]
    env = json.loads((spider_run / "env.json").read_text())
    for key in ("git_commit", "git_dirty", "versions", "device", "num_threads", "seed", "weights_sha256"):
        assert key in env
    assert env["device"] == "cpu" and env["versions"]["torch"] == torch.__version__
    assert len(env["weights_sha256"]) == 64


def test_git_state_from_one_status_call_equals_rev_parse_and_porcelain():
    from cnnviz.output.envinfo import _git, _git_state

    commit = _git("rev-parse", "HEAD")
    if commit is None:
        pytest.skip("not a git checkout")
    status = _git("status", "--porcelain", "--untracked-files=no")
    assert _git_state() == (commit, bool(status))


@pytest.mark.slow  # end to end: run.py / script processes
@needs_shared_images
def test_gradcam_spider_covers_the_spider(spider_run):
    """The spider is the dark object on a light background: the CAM's mass sits on dark pixels."""
    cam = np.load(spider_run / "spider_gradcam_bn2_upsampled.npy")
    picture = np.asarray(Image.open(spider_run / "spider_gradcam_bn2_cam_on_image.png"))  # sized like the input
    assert picture.shape[:2] == cam.shape
    top = cam >= np.quantile(cam, 0.9)
    ys, xs = np.nonzero(top)
    # the spider sits left of centre in the classic image; its body spans roughly x 40-150, y 40-190
    assert 30 <= xs.mean() <= 150 and 30 <= ys.mean() <= 190


@pytest.mark.slow  # end to end: run.py / script processes
def test_classic_four_on_vgg19_random_weights_offline(tmp_path, image_cache):
    # a 64 px input: the same files and code paths at a twelfth of the 224 px compute
    ok(run_cli(["method=[vanilla_backprop,guided_backprop,gradcam,guided_gradcam]", "model=vgg19", "model.weights=null",
                "image=chelsea", "model.preprocess.input_size=64"], tmp_path, image_cache))
    df = pd.read_csv(tmp_path / "manifest.csv")
    assert sorted(df.method) == ["gradcam", "guided_backprop", "guided_gradcam", "vanilla_backprop"]
    assert set(df.status) == {"ok"} and set(df.weights) == {"random(seed=0)"}
    names = {p.name for p in tmp_path.iterdir()}
    for expected in ["chelsea_vanilla_backprop_color.png", "chelsea_vanilla_backprop_gray.png", "chelsea_vanilla_backprop.npy",
                     "chelsea_guided_backprop_pos_sal.png", "chelsea_guided_backprop_neg_sal.png",
                     "chelsea_gradcam_features.35_cam_on_image.png", "chelsea_guided_gradcam_features.35_gray.png",
                     "chelsea_guided_gradcam_features.35_color.png", "chelsea_guided_gradcam_features.35.npy"]:
        assert expected in names
    assert np.load(tmp_path / "chelsea_guided_gradcam_features.35.npy").shape == (3, 64, 64)


@pytest.mark.slow  # end to end: run.py / script processes
def test_cfg_job_inspection_and_console_script(tmp_path, image_cache):
    out = ok(run_cli(["--cfg", "job", "method=[gradcam,guided_backprop]"], tmp_path, image_cache)).stdout
    assert "gradcam:" in out and "guided_backprop:" in out and "efficientnet_lite0" in out
    script = Path(sys.executable).parent / "cnnviz"
    assert script.exists(), "console script `cnnviz` is not installed"
    proc = subprocess.run([str(script), "--cfg", "job", "method=[gradcam,guided_backprop]"], capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stdout == out


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize(
    "args, expected",
    [
        (["method=gradcm"], ["unknown method 'gradcm'", "close matches: gradcam"]),
        (["image=spidr"], ["unknown image 'spidr'", "close matches: spider"]),
        (["model=vgg91"], ["unknown model 'vgg91'", "close matches: vgg19"]),
        (["layer=blocks.99"], ["layer 'blocks.99' not found in efficientnet_lite0", "close matches: blocks.6"]),
        (["target=1000"], ["target 1000 is out of range", "0..999"]),
        (["layer=classifier"], ["outputs (1, 1000)", "(B, C, H, W)"]),
        (["+method.gradcam.alpha=1"], ["method.gradcam.alpha: unknown hyperparameter"]),
        (["method=occlusion", "method.occlusion.incremental=maybe"], ["method.occlusion.incremental='maybe': must be true or false"]),
        (["model=timm", "model.arch=efficientnet_b0", "method=guided_backprop"], ["ReLU-family modules", "has none"]),
        (["model=timm", "model.arch=resnet81"], ["unknown timm architecture 'resnet81'", "resnet18"]),
        (["image=file"], ["image.file.path is not set"]),
        (["image=file", "image.file.path=/nonexistent/x.jpg"], ["does not exist"]),
    ],
)
def test_configuration_errors_exit_nonzero_before_work(args, expected, tmp_path, image_cache):
    proc = run_cli(args, tmp_path, image_cache)
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr + proc.stdout
    assert not (tmp_path / "manifest.csv").exists()
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_gpu_is_a_clear_error_and_auto_falls_back(tmp_path, image_cache):
    proc = run_cli(["device=cuda"], tmp_path / "a", image_cache)
    assert proc.returncode == 2 and "no CUDA GPU is available" in proc.stderr and "device=auto" in proc.stderr
    ok(run_cli(["device=auto", "image=rocket"], tmp_path / "b", image_cache))
    assert json.loads((tmp_path / "b" / "env.json").read_text())["device"] == "cpu"


@pytest.mark.slow  # end to end: run.py / script processes
def test_offline_preset_not_cached_says_where_to_put_it(tmp_path):
    empty = tmp_path / "empty-cache"
    proc = run_cli(["image=snake"], tmp_path / "run", empty)
    assert proc.returncode == 2
    assert str(empty / "images" / "snake.png") in proc.stderr
    assert "0e694fcaf61b4c254e4d431896c198835c1e3c6c4f8797940e37fb76a0f0f047" in proc.stderr


@pytest.mark.slow  # end to end: run.py / script processes
def test_sha256_mismatch_is_refused_and_moved_aside(tmp_path):
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    bad = cache / "images" / "spider.png"
    Image.new("RGB", (8, 8)).save(bad)
    proc = run_cli(["image=spider"], tmp_path / "run", cache)
    assert proc.returncode == 2 and "spider" in proc.stderr
    assert not bad.exists()


def _truncated_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.slow  # end to end: run.py / script processes
def test_unreadable_named_file_is_a_configuration_error(tmp_path, image_cache):
    _truncated_png(tmp_path / "broken.png")
    (tmp_path / "text.png").write_text("not an image")
    for name in ("broken.png", "text.png"):
        proc = run_cli(["image=file", f"image.file.path={tmp_path / name}"], tmp_path / f"run-{name}", image_cache)
        assert proc.returncode == 2 and "not a readable image" in proc.stderr


@pytest.mark.slow  # end to end: run.py / script processes
def test_failed_item_is_recorded_and_the_rest_still_run(tmp_path, image_cache):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 120, 4), dtype=np.uint8), "RGBA").save(folder / "a_good.png")
    _truncated_png(folder / "b_broken.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 50), dtype=np.uint8), "L").save(folder / "c_gray.jpg")
    run = tmp_path / "run"
    proc = run_cli(["image=folder", f"image.folder.path={folder}", "method=[gradcam,vanilla_backprop]"], run, image_cache)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]  # some items failed
    assert proc.stdout.strip().splitlines()[-1] == f"cnnviz: 4 ok, 2 failed; manifest: {run / 'manifest.csv'}"
    df = pd.read_csv(run / "manifest.csv")
    assert len(df) == 6
    assert set(df[df.image == "b_broken"].status) == {"error"}
    assert df[df.image == "b_broken"].error.str.contains("not a readable image").all()
    assert set(df[df.image != "b_broken"].status) == {"ok"}


@pytest.mark.slow  # end to end: run.py / script processes
def test_errors_and_reruns_never_lose_earlier_results(tmp_path, image_cache):
    ok(run_cli(["image=rocket"], tmp_path, image_cache))
    before = snapshot(tmp_path)
    # target=5000, a missing image file and another configuration into the same folder are checked against
    # an archive the same way in test_trust_runs (test_a_failed_or_different_start_leaves_the_archive_untouched,
    # test_another_configuration_is_refused_naming_the_keys)
    for bad in (["layer=nope"], ["method=gradcm"], ["method.gradcam.relu=maybe"], ["model.streams=0"], ["model.streams=abc"]):
        assert run_cli(["image=rocket", *bad], tmp_path, image_cache).returncode != 0
        assert snapshot(tmp_path) == before
    ok(run_cli(["image=rocket"], tmp_path, image_cache))  # the same configuration again is fine
    assert list(pd.read_csv(tmp_path / "manifest.csv").method) == ["gradcam"]


@pytest.mark.slow  # end to end: run.py / script processes
def test_non_square_input_keeps_its_shape(tmp_path, image_cache):
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (150, 300, 3), dtype=np.uint8)).save(path)
    ok(run_cli(["image=file", f"image.file.path={path}", "model.preprocess.resize=keep_aspect",
                "method=[gradcam,vanilla_backprop]"], tmp_path / "run", image_cache))
    assert np.load(tmp_path / "run" / "wide_gradcam_bn2_upsampled.npy").shape == (224, 448)
    assert np.load(tmp_path / "run" / "wide_vanilla_backprop.npy").shape == (3, 224, 448)
    assert Image.open(tmp_path / "run" / "wide_gradcam_bn2_cam_on_image.png").size == (448, 224)


@pytest.mark.slow  # end to end: run.py / script processes
def test_user_image_names_cannot_escape_the_run_folder(tmp_path, image_cache):
    src = tmp_path / "pic.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(src)
    run = tmp_path / "run"
    ok(run_cli(["image=file", f"image.file.path={src}", "+image.file.name=../../escape", "method=vanilla_backprop"], run, image_cache))
    assert not list(tmp_path.glob("escape*")) and not list(tmp_path.parent.glob("escape*"))
    assert pd.read_csv(run / "manifest.csv").image.item() == "escape"


@pytest.mark.slow  # end to end: run.py / script processes
def test_target_list_gives_one_item_per_target(tmp_path, image_cache):
    ok(run_cli(["image=coffee", "target=[967,504]", "method=gradcam"], tmp_path, image_cache))
    df = pd.read_csv(tmp_path / "manifest.csv")
    assert sorted(df.target) == [504, 967] and set(df.predicted) == {967}
    assert (tmp_path / "coffee_gradcam_bn2_t504_cam_on_image.png").is_file()




@pytest.mark.slow  # end to end: run.py / script processes
def test_run_cli_in_a_fork_behaves_as_a_new_interpreter(tmp_path, image_cache, monkeypatch):
    """``run_cli`` forks a process that imported run.py's dependencies (tests/_zygote.py): the same exit
    status and messages as ``python run.py``, the environment's thread count honoured, the cwd and env
    of the call, and a timeout that kills the run."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = {}
    for fork in ("1", "0"):
        monkeypatch.setenv("CNNVIZ_TEST_FORK", fork)
        bad = run_cli(["method=gradcm"], tmp_path / f"bad{fork}", image_cache)
        good = ok(run_cli(["image=rocket", "method=vanilla_backprop"], tmp_path / f"good{fork}", image_cache))
        runs[fork] = (bad, good, json.loads((tmp_path / f"good{fork}" / "env.json").read_text()))
    (bad1, good1, env1), (bad0, good0, env0) = runs["1"], runs["0"]
    assert bad1.returncode == bad0.returncode == 2 and bad1.stderr == bad0.stderr and bad1.stdout == bad0.stdout
    assert env1["num_threads"] == env0["num_threads"] == 1
    maps = lambda run: {k: v for k, v in snapshot(run).items() if k.endswith((".npy", ".png"))}  # noqa: E731
    assert maps(tmp_path / "good1") == maps(tmp_path / "good0") != {}
    monkeypatch.setenv("CNNVIZ_TEST_FORK", "1")
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(["image=rocket", "method=smoothgrad", "method.smoothgrad.n_samples=500"], tmp_path / "slow", image_cache,
                timeout=3)
    ok(run_cli(["image=rocket", "method=vanilla_backprop"], tmp_path / "after", image_cache))  # the zygote still serves
