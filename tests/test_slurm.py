"""Sweeps on a real SLURM cluster: sharded array jobs, requeue and resume, a readable launcher log.

The cluster is the one-node cluster of ``scripts/slurm/local-cluster.sh`` (installed and started by
``.ci/run``; a session fixture starts it too). Where it cannot start — not root, no apt-get, no
network for the packages — the cluster tests are skipped with the script's reason. The shard
expansion of the command line and the restart detection are tested without a cluster.

Every run is ``python run.py ...`` in a subprocess, as a user types it (on the cluster with
``-m hydra/launcher=slurm_local``), over a list of tiny generated PNGs with labels (``image=list``);
jobs run the embedded efficientnet_lite0 with one gradient technique, so a job takes seconds.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, ok
from cnnviz.app.cli import expand_shards, slurm_restart_count
from cnnviz.core.errors import ConfigError

CLUSTER = ROOT / "scripts" / "slurm" / "local-cluster.sh"
SACCT_WARNING = re.compile(r"Bypassing sacct error|accounting storage is disabled")


# --- without a cluster -----------------------------------------------------------------------------


@pytest.mark.parametrize("args, added", [
    (["-m", "shards=4", "image=list"], ["shard=range(0,4)"]),
    (["--multirun", "image=list", "+shards=3"], ["shard=range(0,3)"]),
    (["image=list", "hydra.mode=MULTIRUN", "shards=2"], ["shard=range(0,2)"]),
    (["-m", "shards=4", "shard=1"], []),            # one part asked for by name
    (["-m", "shards=4", "shard=0,2"], []),
    (["shards=4"], []),                              # a single run: the user picks shard= (default 0)
    (["-m", "shards=1"], []),                        # nothing to split
    (["-m", "method=gradcam,layercam"], []),
])
def test_shards_expand_to_one_job_per_shard_in_a_multirun(args, added):
    assert expand_shards(args) == args + added


def test_a_sweep_over_shard_counts_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"shards=2,4.*shard="):
        expand_shards(["-m", "shards=2,4"])


@pytest.mark.parametrize("env, count", [({}, 0), ({"SLURM_RESTART_COUNT": "0"}, 0), ({"SLURM_RESTART_COUNT": "2"}, 2),
                                        ({"SLURM_RESTART_COUNT": ""}, 0), ({"SLURM_RESTART_COUNT": "x"}, 0)])
def test_slurm_restart_count_reads_the_environment(monkeypatch, env, count):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert slurm_restart_count() == count


def image_list(folder: Path, n: int, size: int = 32) -> Path:
    """``n`` random ``size``-pixel PNGs and ``list.csv`` (path,target) beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    lines = ["path,target"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
        lines.append(f"im{i:03d}.png,{i % 10}")
    path = folder / "list.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args: list[str], cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in ``cwd`` (so that the list path, and with it the job folders' names, is short)."""
    environ = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/manifest.csv"))


def slurm_jobs(sweep: Path) -> list[str]:
    """The SLURM ids of the sweep's jobs (``<array job>_<task>``, or ``<job>`` for a one-job sweep), from
    submitit's folders: one per job, holding the job's pickled call."""
    return sorted(p.parent.name for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))


@pytest.mark.slow
def test_shards_run_as_separate_jobs_and_merge(tmp_path):
    image_list(tmp_path, 8)
    sweep = tmp_path / "sweep"
    ok(run(["-m", "image=list", "image.list.path=list.csv", "method=vanilla_backprop", "shards=2",
            f"hydra.sweep.dir={sweep}"], tmp_path, 300))
    jobs = job_folders(sweep)
    assert [j.name.split("shard=")[1].split(",")[0] for j in jobs] == ["0", "1"]
    per_job = [set(pd.read_csv(j / "manifest.csv")["image"]) for j in jobs]
    assert per_job == [{f"im{i:03d}" for i in range(k, 8, 2)} for k in (0, 1)]  # job i takes images i, i+2, ...
    merged = pd.read_csv(sweep / "manifest.csv")
    assert sorted(merged["image"]) == [f"im{i:03d}" for i in range(8)]


@pytest.mark.slow
def test_a_job_restarted_by_slurm_resumes_into_its_folder(tmp_path):
    image_list(tmp_path, 4)
    out = tmp_path / "run"
    args = ["image=list", "image.list.path=list.csv", "method=vanilla_backprop", f"hydra.run.dir={out}"]
    first = ok(run(args, tmp_path, 300))
    assert "restarted by SLURM" not in first.stderr + (out / "run.log").read_text()
    again = ok(run(args, tmp_path, 300, SLURM_RESTART_COUNT="1"))  # what SLURM sets in a requeued job
    log = (out / "run.log").read_text()
    assert "restarted by SLURM (restart 1): resuming" in log, log
    assert "resume: 4 item(s) already complete, skipped" in log, log
    assert "4 ok, 0 failed" in again.stdout
    assert sorted(pd.read_csv(out / "manifest.csv")["image"]) == [f"im{i:03d}" for i in range(4)]


# --- on the local cluster --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm() -> None:
    """The local cluster, started (idempotent; installs SLURM on first use); skip with the reason when it cannot."""
    if shutil.which("bash") is None:
        pytest.skip("no bash to run scripts/slurm/local-cluster.sh")
    try:
        proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.skip("the local SLURM cluster did not start within 15 minutes (scripts/slurm/local-cluster.sh start)")
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        said = [line for line in lines if line.startswith("local-cluster:")]  # its own words before the log tails
        pytest.skip("the local SLURM cluster cannot start (scripts/slurm/local-cluster.sh start): "
                    + " | ".join(said or lines[-6:]))


@pytest.fixture(scope="module")
def sharded_sweep(slurm, tmp_path_factory):
    """A 4-shard sweep over 64 images on the local cluster: (sweep folder, the finished process)."""
    tmp = tmp_path_factory.mktemp("slurm-shards")
    image_list(tmp, 64)
    sweep = tmp / "sweep"
    proc = run(["-m", "hydra/launcher=slurm_local", "image=list", "image.list.path=list.csv", "method=vanilla_backprop",
                "shards=4", f"hydra.sweep.dir={sweep}"], tmp, 900)
    return sweep, proc


@pytest.mark.slow
def test_a_sharded_sweep_runs_as_a_slurm_array_and_merges(sharded_sweep):
    sweep, proc = sharded_sweep
    ok(proc)
    jobs = job_folders(sweep)
    assert len(jobs) == 4, [j.name for j in jobs]
    # submitit's folders: one per array task of one array job
    tasks = slurm_jobs(sweep)
    assert len(tasks) == 4 and len({t.split("_")[0] for t in tasks}) == 1 and all("_" in t for t in tasks), tasks
    for k, job in enumerate(jobs):
        frame = pd.read_csv(job / "manifest.csv")
        assert sorted(frame["image"]) == [f"im{i:03d}" for i in range(k, 64, 4)], job.name
    merged = pd.read_csv(sweep / "manifest.csv")
    assert len(merged) == 64 and sorted(merged["image"]) == [f"im{i:03d}" for i in range(64)]
    assert (merged["status"] == "ok").all()
    assert "64 ok, 0 failed in 4 job(s)" in proc.stdout


@pytest.mark.slow
def test_the_launcher_log_has_no_sacct_warning_flood(sharded_sweep):
    sweep, proc = sharded_sweep
    ok(proc)
    text = proc.stdout + proc.stderr + "".join(p.read_text() for p in sweep.glob("*.log"))
    warnings = SACCT_WARNING.findall(text)
    assert len(warnings) <= 1, "\n".join(line for line in text.splitlines() if SACCT_WARNING.search(line))[:3000]
    # what submitit asks, answered for every task of the array (from squeue: the cluster keeps no accounting)
    tasks = slurm_jobs(sweep)
    query = subprocess.run([str(ROOT / "scripts" / "slurm" / "bin" / "sacct"), "-o", "JobID,State,NodeList",
                            "--parsable2", "-j", tasks[0].split("_")[0]], capture_output=True, text=True, timeout=30)
    lines = ok(query).stdout.splitlines()
    assert lines[0] == "JobID|State|NodeList"
    assert sorted(line.split("|")[:2] for line in lines[1:]) == [[t, "COMPLETED"] for t in tasks]


def _rows(manifest: Path) -> int:
    try:
        return len(pd.read_csv(manifest))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_now_when_requeued(job_id: str, timeout: float = 120) -> None:
    """Once the requeued job is pending again (its first run ended), let it start at once: SLURM holds a
    requeued job for two minutes (EligibleTime = requeue + 121 s), which would only slow the test down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if state == "PENDING":
            ok(subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True,
                              text=True, timeout=30))
            return
        time.sleep(0.5)
    pytest.fail(f"job {job_id} was not pending within {timeout:.0f} s of its requeue (squeue: {state!r})")


@pytest.mark.slow
def test_a_requeued_job_resumes_and_lists_every_item_once(slurm, tmp_path):
    n = 64
    image_list(tmp_path, n)
    sweep = tmp_path / "sweep"
    # slow enough to be caught mid-way: 16 path points per image, manifest rows every 4 images
    args = ["-m", "hydra/launcher=slurm_local", "image=list", "image.list.path=list.csv",
            "method=integrated_gradients", "method.integrated_gradients.n_steps=16", "batch_size=4",
            f"hydra.sweep.dir={sweep}"]
    environ = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=environ,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    job_id = None
    try:
        deadline = time.monotonic() + 600
        manifest, rows = None, 0
        while time.monotonic() < deadline and launcher.poll() is None:
            found = list(sweep.glob("*/manifest.csv"))
            if found:
                manifest, rows = found[0], _rows(found[0])
                if 0 < rows < n:
                    break
            time.sleep(0.2)
        assert manifest is not None and 0 < rows < n, f"the job was not caught mid-way ({rows} of {n} rows)"
        [job_id] = slurm_jobs(sweep)
        first_pid = int(re.search(r"pid (\d+)", (manifest.parent / ".cnnviz.lock").read_text())[1])
        ok(subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30))
        _start_now_when_requeued(job_id)
        out, _ = launcher.communicate(timeout=900)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            if job_id is not None:
                subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    assert launcher.returncode == 0, out[-4000:]
    job = manifest.parent
    log = (job / "run.log").read_text()
    assert "restarted by SLURM (restart 1): resuming" in log, log[-3000:]
    skipped = int(re.search(r"resume: (\d+) item\(s\) already complete, skipped", log)[1])
    assert rows <= skipped < n  # the rows written before the requeue were not computed again
    # the first instance died (its flock with it): the restart took the folder's lock
    assert not _alive(first_pid)
    assert f"pid {first_pid} " not in (job / ".cnnviz.lock").read_text()
    merged = pd.read_csv(sweep / "manifest.csv")
    assert sorted(merged["image"]) == [f"im{i:03d}" for i in range(n)]  # every item exactly once
    assert (merged["status"] == "ok").all()
    assert SACCT_WARNING.search(out) is None, out[-3000:]
