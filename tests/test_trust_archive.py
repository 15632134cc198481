"""An archive is data, never code; verify checks every byte (issue 21, points 1, 2 and 7).

One real run (efficientnet_lite0, Grad-CAM at two layers on ``coffee``: two rows sharing one input
picture) is made by ``run.py`` as a user types it; each test works on a copy of it. Hostile
archives name importable callables (``shutil.rmtree`` with ``model.path`` on a victim folder, which
``hydra.utils.get_method`` would run); every one must be refused with the key and the value named,
and the victim must survive.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from conftest import ROOT, ok, one_thread_everywhere, run_cli, sha

LAYERS = ("blocks.5", "bn2")
RUN_ARGS = ["method=gradcam", f"layer=[{','.join(LAYERS)}]", "image=coffee"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread here and in the child processes, so that an in-process recompute is
    bit-identical to the archived run (as in test_sweeps)."""
    with one_thread_everywhere():
        yield


@pytest.fixture(scope="module")
def archive(tmp_path_factory, image_cache) -> Path:
    run = tmp_path_factory.mktemp("archive") / "run"
    ok(run_cli(RUN_ARGS, run, image_cache))
    return run


@pytest.fixture
def job(archive, tmp_path) -> Path:
    """A private copy of the archived run."""
    copy = tmp_path / "job"
    shutil.copytree(archive, copy)
    return copy


@pytest.fixture
def victim(tmp_path) -> Path:
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    return folder


def survived(victim: Path) -> bool:
    return (victim / "precious.txt").is_file()


def edit_config(job: Path, change) -> None:
    path = job / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    change(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def hostile(victim: Path):
    def change(cfg):
        cfg["model"]["_target_"] = "shutil.rmtree"
        cfg["model"]["path"] = str(victim)
    return change


def run_main(module: str, capsys, *argv) -> tuple[int, str]:
    """``main(argv)`` of ``cnnviz.<module>``; its exit status and everything it printed."""
    import importlib

    main = importlib.import_module(f"cnnviz.{module}").main
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def verdicts(text: str) -> dict[str, tuple[str, str]]:
    """{file name: (verdict, detail)} from verify's output lines."""
    import re

    out = {}
    for line in text.splitlines():
        m = re.match(r"^(identical|different|missing)\s+(.+?)(?:  \((.*)\))?$", line)
        if m:
            assert Path(m[2]).name not in out, f"{m[2]} reported twice:\n{text}"
            out[Path(m[2]).name] = (m[1], m[3] or "")
    return out


def set_manifest_sha(job: Path, name: str) -> None:
    """Record ``name``'s current sha256 in the manifest, as a run that wrote these bytes would have."""
    frame = pd.read_csv(job / "manifest.csv")
    for col in [c for c in frame.columns if c.startswith("file_")]:
        frame.loc[frame[col] == name, "sha256_" + col[5:]] = sha(job / name)
    frame.to_csv(job / "manifest.csv", index=False)


# --- point 1: only registered model loaders are built ------------------------------------------------


def test_every_model_preset_names_a_registered_loader_and_every_loader_has_a_preset():
    from cnnviz.models.registry import get_loader, loader_names

    presets = {yaml.safe_load(p.read_text())["_target_"] for p in (ROOT / "conf" / "model").glob("*.yaml")}
    assert presets == {n for n in loader_names() if n.startswith("cnnviz.")}
    for name in presets:  # the _target_ strings keep naming the functions they always named
        module, _, attr = name.rpartition(".")
        assert get_loader(name) is getattr(__import__(module, fromlist=[attr]), attr)


@pytest.mark.parametrize("target", [
    "shutil.rmtree",             # deletes model.path
    "os.remove",                 # any importable callable
    "cnnviz.app.plan.load_model",    # cnnviz's own functions are not loaders either
    "cnnviz.models.loaders.LoadedModel",
    "cnnviz.models.loaders.efficientnet_lite0.__call__",
])
def test_a_composed_model_target_outside_the_loaders_is_refused(target, victim):
    from hydra import compose, initialize_config_dir

    from cnnviz.app.schema import register_configs
    from cnnviz.core.errors import ConfigError
    from cnnviz.app.plan import load_model

    register_configs()
    path = victim if target != "os.remove" else victim / "precious.txt"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model._target_={target}", f"model.path={path}"])
    with pytest.raises(ConfigError) as err:
        load_model(cfg.model, 0)
    msg = str(err.value)
    assert "model._target_" in msg and target in msg and "cnnviz.models.loaders.timm_model" in msg, msg
    assert survived(victim)


@pytest.mark.slow  # a run.py process: ~5-15 s on 2 busy cores
def test_run_py_refuses_a_model_target_outside_the_loaders_with_exit_2(tmp_path, image_cache, victim):
    proc = run_cli(["model._target_=shutil.rmtree", f"model.path={victim}"], tmp_path / "run", image_cache)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "model._target_" in proc.stderr and "shutil.rmtree" in proc.stderr and "Traceback" not in proc.stderr
    assert survived(victim)


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize("module", ["verify", "rerun"])
def test_a_hostile_archive_is_refused_and_the_victim_survives(module, job, victim, capsys, tmp_path):
    edit_config(job, hostile(victim))
    argv = [job] if module == "verify" else [job, "--out", tmp_path / "again"]
    rc, out = run_main(module, capsys, *argv)
    assert rc == 2, out
    assert "model._target_" in out and "shutil.rmtree" in out, out
    assert survived(victim)
    assert not (tmp_path / "again" / "manifest.csv").exists()


def _nested(cfg):
    cfg["experiment"] = {"evil": {"_target_": "os.system", "_args_": ["touch pwned"]}}


def _in_method(cfg):
    cfg["method"]["gradcam"]["_target_"] = "builtins.exec"


def _in_list(cfg):
    cfg["layer"] = ["bn2", {"_target_": "shutil.rmtree", "path": "/"}]


def _interpolated(cfg):
    cfg["model"]["_target_"] = "${oc.env:CNNVIZ_EVIL_TARGET}"


def _created(cfg):
    cfg["experiment"] = "${oc.create:'{_target_: shutil.rmtree}'}"


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize("change, key", [
    (_nested, "experiment.evil._target_"), (_in_method, "method.gradcam._target_"), (_in_list, "layer[1]._target_"),
    (_interpolated, "model._target_"), (_created, "experiment._target_"),
])
@pytest.mark.parametrize("module", ["verify", "rerun"])
def test_a_target_anywhere_in_an_archive_is_refused(module, change, key, job, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNVIZ_EVIL_TARGET", "shutil.rmtree")
    edit_config(job, change)
    argv = [job] if module == "verify" else [job, "--out", tmp_path / "again"]
    rc, out = run_main(module, capsys, *argv)
    assert rc == 2, out
    assert key in out and "_target_" in out, out
    assert not (tmp_path / "again" / "manifest.csv").exists()


@pytest.mark.slow  # end to end: run.py / script processes
def test_rerun_refuses_overrides_that_would_build_something(job, capsys, tmp_path):
    """The archived overrides are copied into the new archive, where ``python run.py`` would apply them."""
    recorded = job / ".hydra" / "overrides.yaml"
    kept = recorded.read_text()
    for line, key in (("+hydra.callbacks.evil._target_=os.system", "hydra.callbacks.evil._target_"),
                      ("+hydra.callbacks.evil={_target_:os.system}", "hydra.callbacks.evil._target_"),
                      ("experiment={x:[{_target_:os.system}]}", "experiment.x[0]._target_")):
        recorded.write_text(yaml.safe_dump(["method=gradcam", line]))
        rc, out = run_main("rerun", capsys, job, "--out", tmp_path / "again")
        assert rc == 2 and "overrides.yaml" in out and key in out and "os.system" in out, out
    recorded.write_text(kept)
    for extra in ("model._target_=shutil.rmtree", "experiment={_target_:os.system}"):
        rc, out = run_main("rerun", capsys, job, "--out", tmp_path / "again", extra)
        assert rc == 2 and "_target_" in out and extra.split("_target_")[1].strip("=:}") in out, out
    assert not (tmp_path / "again" / "manifest.csv").exists()


# --- point 2: a rerun that needs no pickle ------------------------------------------------------------


class _Poison:
    """Unpickling calls ``open(marker, "w")``: the file appears if anything loads the pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow  # two python processes and a recompute: ~10-20 s on 2 busy cores
def test_rerun_never_loads_a_poisoned_pickle_and_reproduces_the_arrays(job, tmp_path, image_cache):
    marker = tmp_path / "pwned"
    poisoned = job / ".hydra" / "config.pickle"
    poisoned.write_bytes(pickle.dumps(_Poison(marker)))
    # the poison is real: loading it makes the marker
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(poisoned)!r}, 'rb'))"], check=True)
    assert marker.is_file()
    marker.unlink()

    out = tmp_path / "again"
    env = {**os.environ, "CNNVIZ_HOME": str(image_cache)}
    ok(subprocess.run([sys.executable, "-m", "cnnviz.rerun", str(job), "--out", str(out)], cwd=ROOT, env=env,
                      capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL))
    assert not marker.exists()
    assert not (out / ".hydra" / "config.pickle").exists()
    before, after = pd.read_csv(job / "manifest.csv"), pd.read_csv(out / "manifest.csv")
    assert len(after) == len(before) == len(LAYERS)
    for _, row in before.iterrows():
        for kind in ("npy", "npy_upsampled"):
            assert sha(out / row[f"file_{kind}"]) == sha(job / row[f"file_{kind}"]) == row[f"sha256_{kind}"]
    archived = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "config.yaml"))
    assert OmegaConf.to_container(OmegaConf.load(out / ".hydra" / "config.yaml")) == archived
    assert yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text()) == RUN_ARGS


@pytest.mark.slow  # end to end: run.py / script processes
def test_rerun_applies_value_overrides(job, capsys, tmp_path):
    out = tmp_path / "again"
    rc, text = run_main("rerun", capsys, job, "--out", out, "render.alpha=0.7", "layer=bn2")
    assert rc == 0, text
    cfg = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert cfg.render.alpha == 0.7 and cfg.layer == "bn2" and cfg.method.gradcam.relu is True
    assert yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text()) == [*RUN_ARGS, "render.alpha=0.7", "layer=bn2"]
    rows = pd.read_csv(out / "manifest.csv")
    assert list(rows.layer) == ["bn2"] and list(rows.status) == ["ok"]
    archived = pd.read_csv(job / "manifest.csv").set_index("layer")
    assert rows.sha256_npy.item() == archived.loc["bn2", "sha256_npy"]  # the map itself does not depend on alpha
    assert rows.sha256_cam_on_image.item() != archived.loc["bn2", "sha256_cam_on_image"]


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize("override, words", [
    ("model=vgg19", ["model=vgg19", "config group", "python run.py"]),
    ("'method=[gradcam,cam]'", ["method", "config group"]),
    ("devcie=cpu", ["devcie"]),
    ("seed=abc", ["seed", "abc"]),
    ("seed=1,2", ["seed=1,2", "sweep"]),
    ("hydra.run.dir=/tmp/x", ["hydra.run.dir", "--out"]),
])
def test_rerun_refuses_what_it_cannot_apply(override, words, job, capsys, tmp_path):
    rc, out = run_main("rerun", capsys, job, "--out", tmp_path / "again", override.strip("'"))
    assert rc == 2, out
    assert all(w in out for w in words), out
    assert "Traceback" not in out and not (tmp_path / "again" / "manifest.csv").exists()


def test_rerun_of_a_folder_without_an_archive(tmp_path, capsys):
    rc, out = run_main("rerun", capsys, tmp_path)
    assert rc == 2 and ".hydra/config.yaml" in out and "Traceback" not in out, out


def test_default_rerun_folder_is_beside_the_run_or_beside_its_sweep(tmp_path):
    from cnnviz.app.rerun import default_out

    run = tmp_path / "runs" / "12-00-00"
    (run / ".hydra").mkdir(parents=True)
    out = default_out(run, "2030-01-02_03-04-05")
    assert out == tmp_path / "runs" / "12-00-00-rerun-2030-01-02_03-04-05"
    out.mkdir()
    assert default_out(run, "2030-01-02_03-04-05") == tmp_path / "runs" / "12-00-00-rerun-2030-01-02_03-04-05-2"
    sweep = tmp_path / "multirun" / "13-00-00"
    (sweep / "layer=bn2,method=gradcam" / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    # not inside the sweep, where merge and verify would take it for one of its jobs
    job = "layer=bn2,method=gradcam"
    assert default_out(sweep / job, "T") == tmp_path / "multirun" / "13-00-00-rerun-T" / job


# --- point 7: verify checks every byte ----------------------------------------------------------------


@pytest.mark.slow  # end to end: run.py / script processes
def test_a_fresh_archive_verifies_and_the_shared_input_is_counted_once(job, capsys):
    rc, out = run_main("verify", capsys, job)
    assert rc == 0, out
    found = verdicts(out)  # raises if a file is reported twice
    listed = pd.read_csv(job / "manifest.csv").filter(like="file_").stack().unique()
    assert sorted(found) == sorted(listed) and len(listed) == 1 + 5 * len(LAYERS)
    assert {v for v, _ in found.values()} == {"identical"}
    assert "1 job(s), 0 file(s) not identical" in out


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize("name", ["coffee_gradcam_bn2_cam_on_image.png", "coffee_gradcam_blocks.5_cam_gray.png",
                                  "coffee_input.png"])
def test_verify_atol_catches_a_replaced_picture(name, job, capsys):
    with Image.open(job / name) as im:
        Image.new(im.mode, im.size).save(job / name)  # black
    for atol in ("0", "0.01"):
        rc, out = run_main("verify", capsys, job, "--atol", atol)
        assert rc == 1, out
        found = verdicts(out)
        assert found[name][0] == "different" and "recorded sha256" in found[name][1], out
        assert [n for n, (v, _) in found.items() if v != "identical"] == [name], out


@pytest.mark.slow  # end to end: run.py / script processes
def test_verify_atol_does_not_excuse_an_array_changed_after_the_run(job, capsys):
    raw = job / "coffee_gradcam_bn2_upsampled.npy"
    np.save(raw, np.load(raw) + np.float32(1e-4))
    rc, out = run_main("verify", capsys, job, "--atol", "0.01")
    assert rc == 1, out
    verdict, detail = verdicts(out)[raw.name]
    assert verdict == "different" and "recorded sha256" in detail, out


@pytest.mark.slow  # end to end: run.py / script processes
def test_verify_atol_accepts_renderings_of_arrays_within_atol(job, capsys):
    """An archive made where the arrays came out slightly different (a GPU): its own manifest
    records its bytes; the PNGs drawn from those arrays then differ from the recompute's."""
    png = "coffee_gradcam_bn2_cam_gray.png"
    with Image.open(job / png) as im:
        Image.fromarray(np.asarray(im) // 2).save(job / png)
    set_manifest_sha(job, png)
    rc, out = run_main("verify", capsys, job, "--atol", "0.01")
    assert rc == 1 and verdicts(out)[png][0] == "different", out  # the row's arrays are equal: no excuse

    raw = job / "coffee_gradcam_bn2_upsampled.npy"
    np.save(raw, np.load(raw) + np.float32(1e-4))
    set_manifest_sha(job, raw.name)
    rc, out = run_main("verify", capsys, job, "--atol", "0.01")
    assert rc == 0, out
    found = verdicts(out)
    assert found[png] == ("identical", "re-rendered from arrays within atol"), out
    assert found[raw.name][0] == "identical" and found[raw.name][1].startswith("max abs diff"), out
    # the other layer's row and the shared input are still compared byte for byte
    assert found["coffee_gradcam_blocks.5_cam_gray.png"] == ("identical", "")
    assert found["coffee_input.png"] == ("identical", "")
    rc, out = run_main("verify", capsys, job)
    assert rc == 1 and verdicts(out)[png][0] == "different", out


def _no_manifest(job):
    (job / "manifest.csv").unlink()


def _empty(job):
    (job / "manifest.csv").write_text("")


def _header_only(job):
    (job / "manifest.csv").write_text((job / "manifest.csv").read_text().splitlines(keepends=True)[0])


def _a_directory(job):
    (job / "manifest.csv").unlink()
    (job / "manifest.csv").mkdir()


def _not_a_manifest(job):
    (job / "manifest.csv").write_text("a,b\n1,2\n")


def _only_errors(job):
    frame = pd.read_csv(job / "manifest.csv")
    frame["status"] = "error"
    frame.to_csv(job / "manifest.csv", index=False)


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize("damage, words", [
    (_no_manifest, ["no manifest"]), (_empty, ["empty"]), (_header_only, ["no ok row"]),
    (_a_directory, ["not a file"]), (_not_a_manifest, ["not a cnnviz manifest"]), (_only_errors, ["no ok row"]),
])
def test_verify_with_nothing_to_verify_says_so_with_exit_2(damage, words, job, capsys):
    damage(job)
    rc, out = run_main("verify", capsys, job)
    assert rc == 2, out
    assert "manifest.csv" in out and all(w in out for w in words) and "nothing to verify" in out, out
    assert "Traceback" not in out and not verdicts(out)


def test_verify_of_a_folder_without_an_archive(tmp_path, capsys):
    rc, out = run_main("verify", capsys, tmp_path)
    assert rc == 2 and "no archived run" in out, out


@pytest.mark.slow  # end to end: run.py / script processes
def test_verify_reports_a_damaged_manifest_and_checks_its_intact_rows(job, capsys):
    text = (job / "manifest.csv").read_text()
    cut = text.index('"{', text.index("\n", text.index("\n") + 1))  # inside the second row's quoted params
    (job / "manifest.csv").write_text(text[:cut + 5])
    rc, out = run_main("verify", capsys, job)
    assert rc == 1, out
    assert f"{job / 'manifest.csv'}: line 3" in out and "Traceback" not in out, out
    found = verdicts(out)
    assert found["manifest.csv"][0] == "different", out
    assert found["coffee_gradcam_blocks.5.npy"] == ("identical", "")  # the intact first row


@pytest.mark.slow  # end to end: run.py / script processes
def test_verify_says_when_the_manifest_is_from_another_configuration(job, capsys):
    def other_layer(cfg):
        cfg["layer"] = "blocks.4"
    edit_config(job, other_layer)
    rc, out = run_main("verify", capsys, job)
    assert rc == 1, out
    assert "2 of 2 ok row(s)" in out and "not produced by its archived configuration" in out, out
    assert "Traceback" not in out


@pytest.mark.slow  # end to end: run.py / script processes
@pytest.mark.parametrize("change", ["nan", "shape"])
def test_verify_atol_never_accepts_nan_or_another_shape(change, job, capsys):
    raw = job / "coffee_gradcam_bn2.npy"
    a = np.load(raw)
    np.save(raw, np.full_like(a, np.nan) if change == "nan" else a[..., :-1])
    set_manifest_sha(job, raw.name)
    rc, out = run_main("verify", capsys, job, "--atol", "1e9")
    assert rc == 1, out
    assert verdicts(out)[raw.name] == ("different", "max abs diff inf"), out
    assert verdicts(out)["coffee_gradcam_bn2_cam_gray.png"] == ("identical", "")  # its own bytes are the recompute's
