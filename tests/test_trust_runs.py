"""Issue 21 (archives that cannot lie), the run folder: permissions, content-keyed resume, one writer
per folder, failed starts that leave the archive alone, damaged manifests, honest exit status and
messages without terminal codes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, ok, run_cli, sha

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

FAST = ["image=rocket", "method=vanilla_backprop"]


def listed(folder: Path) -> set[str]:
    frame = pd.read_csv(folder / "manifest.csv")
    return {v for c in frame.columns if c.startswith("file_") for v in frame[c].dropna()}


RUN_LEVEL = {"manifest.csv", "env.json", "progress.json", "index.html", "contact_sheet.png", "run.log", ".cnnviz.lock"}


def unlisted(folder: Path) -> set[str]:
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    return files - listed(folder) - RUN_LEVEL


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, image_cache):
    folder = tmp_path_factory.mktemp("base") / "run"
    ok(run_cli(FAST, folder, image_cache))
    return folder


def copy_run(base: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(base, dest)
    return dest


def archive_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("run.log", ".cnnviz.lock")}


# --- 3. permissions ------------------------------------------------------------------------------


def test_atomic_write_gives_the_umask_permissions(tmp_path):
    from cnnviz.output.files import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", b"x")
        os.umask(0o027)
        atomic_write(tmp_path / "b.bin", b"x", durable=True)
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow  # end to end: run.py / script processes
def test_run_folder_files_are_0644(base_run):
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in base_run.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


# --- 4. resume keys on content -------------------------------------------------------------------


def test_completed_needs_the_same_input_and_weights(tmp_path):
    from cnnviz.output.manifest import Manifest

    m = Manifest(tmp_path / "manifest.csv")
    key = {"image": "a", "model": "m", "weights": "w", "method": "vanilla_backprop", "params": {}, "target_request": "default"}
    m.add({**key, "layer": None, "status": "ok", "image_sha256": "aaa", "weights_sha256": "www"})
    assert m.completed(key, None, tmp_path, content={"image_sha256": "aaa", "weights_sha256": "www"})
    assert not m.completed(key, None, tmp_path, content={"image_sha256": "bbb", "weights_sha256": "www"})
    assert not m.completed(key, None, tmp_path, content={"image_sha256": "aaa", "weights_sha256": "vvv"})


def _picture(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)


@pytest.mark.slow  # end to end: run.py / script processes
def test_resume_recomputes_an_input_replaced_under_the_same_name(tmp_path, image_cache):
    pics = tmp_path / "pics"
    pics.mkdir()
    _picture(pics / "a.png", 0)
    _picture(pics / "b.png", 1)
    run = tmp_path / "run"
    args = ["image=folder", f"image.folder.path={pics}", "method=vanilla_backprop"]
    ok(run_cli(args, run, image_cache))
    before = pd.read_csv(run / "manifest.csv").set_index("image")
    b_mtime = (run / before.loc["b", "file_npy"]).stat().st_mtime_ns
    _picture(pics / "a.png", 2)  # a different picture, the same name
    _picture(pics / "a.jpg", 3)  # and a new file whose stem is the same
    ok(run_cli([*args, "resume=true"], run, image_cache))
    after = pd.read_csv(run / "manifest.csv").set_index("image")
    assert sorted(after.index) == ["a", "a_2", "b"]
    names = {"a": pics / "a.jpg", "a_2": pics / "a.png", "b": pics / "b.png"}
    for name, path in names.items():  # every row describes the file that now has its name
        assert after.loc[name, "image_sha256"] == sha(path)
        assert sha(run / after.loc[name, "file_npy"]) == after.loc[name, "sha256_npy"]
    assert after.loc["a", "sha256_npy"] != before.loc["a", "sha256_npy"]
    assert (run / after.loc["b", "file_npy"]).stat().st_mtime_ns == b_mtime  # the unchanged image was skipped


# --- 5. one writer per run folder ----------------------------------------------------------------


def test_a_locked_folder_is_refused_in_the_same_process(tmp_path):
    from cnnviz.app.archive import FolderBusy, exclusive

    with exclusive(tmp_path):
        with pytest.raises(FolderBusy, match=r"another cnnviz run \(pid \d+ .*\) is writing into"):
            with exclusive(tmp_path):
                pass
    with exclusive(tmp_path):  # released on exit
        pass


HOLD = """
import sys, time
from pathlib import Path
from cnnviz.app.archive import exclusive
with exclusive(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow  # end to end: run.py / script processes
def test_a_second_run_into_a_busy_folder_is_refused_and_a_killed_holder_frees_it(tmp_path, image_cache):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = run_cli(FAST, run, image_cache)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "another cnnviz run" in proc.stderr and "is writing into" in proc.stderr
        assert not (run / "manifest.csv").exists() and not (run / ".hydra").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ok(run_cli(FAST, run, image_cache))  # kill -9 left no lock behind
    assert not unlisted(run)


@pytest.mark.slow  # end to end: run.py / script processes
def test_two_runs_started_together_leave_no_unlisted_file(tmp_path, image_cache):
    run = tmp_path / "run"
    env = {**os.environ, "CNNVIZ_HOME": str(image_cache), "HYDRA_FULL_ERROR": "0"}
    cmds = [[sys.executable, str(ROOT / "run.py"), "image=[rocket,chelsea]", "method=[vanilla_backprop,gradcam]",
             f"hydra.run.dir={run}"]] * 2
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for c in cmds]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    # either the second was refused while the first held the folder, or they ran one after the other
    assert codes in ([0, 0], [0, 2]), outs
    if codes == [0, 2]:
        assert any("another cnnviz run" in err for _, err in outs)
    frame = pd.read_csv(run / "manifest.csv")
    assert len(frame) == 4 and set(frame.status) == {"ok"}
    assert not unlisted(run)


# --- 6. a failed start leaves the archive as it was; another configuration is refused ----------------


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize("bad", [[*FAST, "target=5000"], ["image=file", "image.file.path=/nonexistent.png", "method=vanilla_backprop"],
                                 [*FAST, "render.alpha=0.5"]],
                         ids=["config-error", "missing-file", "other-render"])  # another image: the next test
def test_a_failed_or_different_start_leaves_the_archive_untouched(bad, base_run, tmp_path, image_cache):
    run = copy_run(base_run, tmp_path)
    before = archive_state(run)
    proc = run_cli(bad, run, image_cache)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert archive_state(run) == before
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # end to end: run.py / script processes
def test_another_configuration_is_refused_naming_the_keys(base_run, tmp_path, image_cache):
    run = copy_run(base_run, tmp_path)
    before = archive_state(run)
    proc = run_cli(["image=chelsea", "method=vanilla_backprop"], run, image_cache)
    assert proc.returncode == 2
    assert "holds the outputs of another configuration" in proc.stderr and "image.chelsea" in proc.stderr
    assert archive_state(run) == before and "Traceback" not in proc.stderr


@pytest.mark.slow  # end to end: run.py / script processes
def test_the_same_configuration_may_run_again_and_resume(base_run, tmp_path, image_cache):
    run = copy_run(base_run, tmp_path)
    ok(run_cli([*FAST, "resume=true", "--allow-failures"], run, image_cache))
    assert len(pd.read_csv(run / "manifest.csv")) == 1


# --- 8. damaged manifests ------------------------------------------------------------------------


def _cut_inside_quotes(path: Path) -> int:
    text = path.read_text()
    cut = text.rindex('{"')  # inside the params JSON of the last row, a quoted CSV field
    path.write_text(text[:cut + 3])
    return text.count("\n")


def test_read_manifest_keeps_intact_rows_and_names_the_first_bad_one(tmp_path):
    from cnnviz.output.manifest import Manifest, ManifestError, read_manifest

    m = Manifest(tmp_path / "manifest.csv")
    for i in range(3):
        m.add({"image": f"i{i}", "method": "gradcam", "params": {"relu": True}, "layer": "bn2", "status": "ok"})
    whole = (tmp_path / "manifest.csv").read_text()
    _cut_inside_quotes(tmp_path / "manifest.csv")
    frame, damage = read_manifest(tmp_path / "manifest.csv")
    assert list(frame.image) == ["i0", "i1"] and "line 4" in damage and str(tmp_path / "manifest.csv") in damage
    lines = whole.splitlines(keepends=True)
    (tmp_path / "manifest.csv").write_text(lines[0] + lines[1] + "a,b\n" + lines[3])
    frame, damage = read_manifest(tmp_path / "manifest.csv")
    assert list(frame.image) == ["i0"] and "row 2 (line 3)" in damage
    (tmp_path / "manifest.csv").write_text("image,method,status\na,m,ok\nb,m,o")  # cut inside the last field
    frame, damage = read_manifest(tmp_path / "manifest.csv")
    assert list(frame.image) == ["a"] and "the last row (line 3) is cut short" in damage
    (tmp_path / "manifest.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ManifestError, match="is not a cnnviz manifest"):
        Manifest(tmp_path / "manifest.csv")


@pytest.mark.slow  # end to end: run.py / script processes
def test_a_damaged_manifest_is_reported_then_resume_keeps_the_intact_rows(tmp_path, image_cache):
    run = tmp_path / "run"
    args = ["image=[rocket,chelsea]", "method=gradcam"]  # gradcam's params are a quoted JSON field
    ok(run_cli(args, run, image_cache))
    first = pd.read_csv(run / "manifest.csv").iloc[0]
    _cut_inside_quotes(run / "manifest.csv")
    damaged = (run / "manifest.csv").read_bytes()
    proc = run_cli(args, run, image_cache)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{run / 'manifest.csv'}: line 3 is damaged" in proc.stderr and "resume=true" in proc.stderr
    assert "calls:" not in proc.stdout + proc.stderr  # refused before any work
    assert (run / "manifest.csv").read_bytes() == damaged
    kept_mtime = (run / first.file_npy).stat().st_mtime_ns
    proc = ok(run_cli([*args, "resume=true"], run, image_cache))
    frame = pd.read_csv(run / "manifest.csv")
    assert sorted(frame.image) == ["chelsea", "rocket"] and set(frame.status) == {"ok"}
    assert (run / first.file_npy).stat().st_mtime_ns == kept_mtime  # the intact row's item was not recomputed
    copies = list(run.glob("manifest.csv.damaged-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == damaged


@pytest.mark.slow  # end to end: run.py / script processes
def test_a_manifest_that_is_a_directory_is_a_clear_error(tmp_path, image_cache):
    run = tmp_path / "run"
    (run / "manifest.csv").mkdir(parents=True)
    proc = run_cli(FAST, run, image_cache)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{run / 'manifest.csv'} is not a file (a directory is in the way)" in proc.stderr


# --- 13. honest exit status ----------------------------------------------------------------------


@pytest.fixture()
def half_bad_folder(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    _picture(pics / "good.png", 0)
    (pics / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return pics


@pytest.mark.slow  # end to end: run.py / script processes
def test_a_run_with_a_failed_item_exits_3_and_says_so_last(half_bad_folder, tmp_path, image_cache):
    args = ["image=folder", f"image.folder.path={half_bad_folder}", "method=vanilla_backprop"]
    proc = run_cli(args, tmp_path / "a", image_cache)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"cnnviz: 1 ok, 1 failed; manifest: {tmp_path / 'a' / 'manifest.csv'}"
    frame = pd.read_csv(tmp_path / "a" / "manifest.csv").set_index("image")
    assert frame.loc["broken", "status"] == "error" and "not a readable image" in frame.loc["broken", "error"]
    assert frame.loc["good", "status"] == "ok"
    ok(run_cli([*args, "--allow-failures"], tmp_path / "b", image_cache))
    ok(run_cli([*args, "allow_failures=true"], tmp_path / "c", image_cache))


@pytest.mark.slow  # end to end: run.py / script processes
def test_a_multirun_with_failures_exits_3_and_still_merges(half_bad_folder, tmp_path, image_cache):
    sweep = tmp_path / "sweep"
    # four jobs: two with a failing item (the broken file), two stopped by a configuration error
    proc = run_cli(["-m", "image=folder", f"image.folder.path={half_bad_folder}", "method=vanilla_backprop,gradcam",
                    "target=5,5000"], tmp_path / "unused", image_cache, multirun_dir=sweep)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    merged = pd.read_csv(sweep / "manifest.csv")
    merged["job"] = merged.job.str.split("image=folder,").str[-1]  # the folder's path is in every job's name
    by_job = merged.groupby("job").status.apply(sorted).to_dict()
    assert by_job == {"method=gradcam,target=5": ["error", "ok"], "method=vanilla_backprop,target=5": ["error", "ok"],
                      "method=gradcam,target=5000": ["error"], "method=vanilla_backprop,target=5000": ["error"]}
    assert "target 5000 is out of range" in merged.set_index("job").loc["method=gradcam,target=5000", "error"]
    assert proc.stdout.strip().splitlines()[-1] == f"cnnviz: 2 ok, 4 failed in 4 job(s); manifest: {sweep / 'manifest.csv'}"
    assert (sweep / "index.html").is_file()


# --- 14. messages ----------------------------------------------------------------------------------


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_an_output_folder_that_cannot_be_made_is_one_line(where, tmp_path, image_cache):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file in the way")
    run = blocker if where == "file" else blocker / "run"
    proc = run_cli(FAST, run, image_cache)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    assert f"cannot create the output folder {run}" in proc.stderr and "hydra.run.dir" in proc.stderr
    sweep = run_cli(["-m", *FAST], tmp_path / "x", image_cache, multirun_dir=run)
    assert sweep.returncode == 2 and "hydra.sweep.dir" in sweep.stderr and "Traceback" not in sweep.stderr


def test_terminal_codes_are_stripped_from_messages_and_rows():
    from cnnviz.app.runner import plain_text

    assert plain_text("\x1b[31mred\x1b[0m and \x1b[1;33mbold\x1b[m \x1b]8;;http://x\x07link") == "red and bold link"


@pytest.mark.slow  # end to end: run.py / script processes
def test_no_pickle_is_written_into_an_archive(base_run):
    assert not list(base_run.rglob("*.pickle"))
    assert {p.name for p in (base_run / ".hydra").iterdir()} == {"config.yaml", "overrides.yaml", "hydra.yaml"}


def test_archives_that_name_a_loader_by_its_former_module_still_resolve():
    """Run folders made before the package was grouped by role name ``cnnviz.models.<fn>``."""
    from cnnviz.core.errors import ConfigError
    from cnnviz.models.loaders import efficientnet_lite0
    from cnnviz.models.registry import canonical_loader, get_loader

    assert get_loader("cnnviz.models.efficientnet_lite0") is efficientnet_lite0
    assert canonical_loader("cnnviz.segmentation_models.torchvision_segmentation") == \
        "cnnviz.models.segmentation.torchvision_segmentation"
    for hostile in ("cnnviz.models.os", "cnnviz.segmentation_models.torch", "cnnviz.models.loaders.torch"):
        with pytest.raises(ConfigError, match="is not a cnnviz model loader"):
            get_loader(hostile)
