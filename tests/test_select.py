"""experiment=select: ranking with confidence intervals, the sweep's configuration checks, best.yaml,
and the whole selection on the benchmark CNN (issue 25 section 3)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from cnnviz import ConfigError, get_method, list_methods
from cnnviz.app import select
from conftest import ROOT, ok, run_cli

#: Student t quantiles t_{0.975, df}, from the tables (df = 2, 3, 4): the reference the intervals are checked against
T975 = {2: 4.302652729911275, 3: 3.182446305284263, 4: 2.7764451051977987}


def frame(rows: list[tuple]) -> pd.DataFrame:
    """A manifest-like frame: (method, layer, param, value, image, score[, status])."""
    out = []
    for r in rows:
        method, layer, param, value, image, score = r[:6]
        out.append({"method": method, "layer": layer, "param": param, "value": value, "image": image,
                    "insertion_auc": score, "status": r[6] if len(r) > 6 else "ok"})
    return pd.DataFrame(out)


def hand_made() -> pd.DataFrame:
    return frame([
        # A: 1, 2, 3 -> mean 2, s = 1, n = 3
        ("gradcam", "b1", "", "", "i0", 1.0), ("gradcam", "b1", "", "", "i1", 2.0), ("gradcam", "b1", "", "", "i2", 3.0),
        # B: 4, 4, 4, 4 -> mean 4, s = 0: a zero-width interval
        ("gradcam", "b2", "", "", "i0", 4.0), ("gradcam", "b2", "", "", "i1", 4.0),
        ("gradcam", "b2", "", "", "i2", 4.0), ("gradcam", "b2", "", "", "i3", 4.0),
        # C: image i0 has two maps (two targets), averaged first: i0 -> 0.5, i1 -> 3.5 -> mean 2 = A's mean
        ("smoothgrad", "", "noise_level", 0.1, "i0", 0.0), ("smoothgrad", "", "noise_level", 0.1, "i0", 1.0),
        ("smoothgrad", "", "noise_level", 0.1, "i1", 3.5),
        # D: one image -> no interval
        ("smoothgrad", "", "noise_level", 0.25, "i0", 7.0),
        # E: only a failed row and a map the metric did not measure -> unranked
        ("layercam", "b1", "", "", "i0", np.nan, "error"), ("layercam", "b1", "", "", "i1", np.nan),
    ])


# --- ranking -----------------------------------------------------------------------------------------


def test_means_and_student_t_intervals_over_images():
    table = select.rank_candidates(hand_made(), "insertion_auc", higher_is_better=True)
    by = {(r.method, r.layer, str(r.value)): r for r in table.itertuples()}
    a = by[("gradcam", "b1", "")]
    half = T975[2] * 1.0 / math.sqrt(3)
    assert a.n == 3 and a.mean == pytest.approx(2.0)
    assert (a.ci_low, a.ci_high) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-9)
    b = by[("gradcam", "b2", "")]
    assert b.n == 4 and (b.mean, b.ci_low, b.ci_high) == pytest.approx((4.0, 4.0, 4.0))
    c = by[("smoothgrad", "", "0.1")]
    s = np.std([0.5, 3.5], ddof=1)
    assert c.n == 2 and c.mean == pytest.approx(2.0)
    # df = 1: t_{0.975, 1} = tan(pi * 0.475) (the Cauchy quantile)
    assert c.ci_high - c.mean == pytest.approx(math.tan(math.pi * 0.475) * s / math.sqrt(2), rel=1e-9)
    d = by[("smoothgrad", "", "0.25")]
    assert d.n == 1 and d.mean == 7.0 and math.isnan(d.ci_low) and math.isnan(d.ci_high)
    e = by[("layercam", "b1", "")]
    assert e.n == 0 and math.isnan(e.mean) and pd.isna(e.rank)


def test_rank_follows_the_metric_direction_and_breaks_ties_by_sweep_order():
    table = select.rank_candidates(hand_made(), "insertion_auc", higher_is_better=True)
    ranked = [(r.method, r.layer, str(r.value)) for r in table.itertuples() if pd.notna(r.rank)]
    # A and C tie at 2.0: A comes first in the sweep
    assert ranked == [("smoothgrad", "", "0.25"), ("gradcam", "b2", ""), ("gradcam", "b1", ""), ("smoothgrad", "", "0.1")]
    assert table["rank"].dropna().astype(int).tolist() == [1, 2, 3, 4]
    assert list(table.columns[:9]) == ["method", "layer", "param", "value", "n", "mean", "ci_low", "ci_high", "rank"]
    lower = select.rank_candidates(hand_made(), "insertion_auc", higher_is_better=False)
    assert [(r.method, r.layer) for r in lower.itertuples() if pd.notna(r.rank)][:3] == [
        ("gradcam", "b1"), ("smoothgrad", ""), ("gradcam", "b2")]
    # the unranked candidate is listed last, whatever the direction
    assert lower.iloc[-1]["method"] == "layercam" and pd.isna(lower.iloc[-1]["rank"])


def test_the_ranking_does_not_depend_on_the_row_order_when_the_sweep_order_is_given():
    f = hand_made()
    order = [("gradcam", "b1", "", ""), ("gradcam", "b2", "", ""), ("smoothgrad", "", "noise_level", 0.1),
             ("smoothgrad", "", "noise_level", 0.25), ("layercam", "b1", "", "")]
    first = select.rank_candidates(f, "insertion_auc", True, order=order)
    shuffled = select.rank_candidates(f.sample(frac=1.0, random_state=3), "insertion_auc", True, order=order)
    pd.testing.assert_frame_equal(first.reset_index(drop=True), shuffled.reset_index(drop=True))
    # reversing the sweep order flips the tie between A and C
    flipped = select.rank_candidates(f, "insertion_auc", True, order=order[::-1])
    tied = flipped[flipped["mean"] == 2.0]
    assert tied["method"].tolist() == ["smoothgrad", "gradcam"]


def test_the_interval_level_is_an_option():
    f = hand_made()
    wide = select.rank_candidates(f, "insertion_auc", True, level=0.99)
    a = wide[(wide["method"] == "gradcam") & (wide["layer"] == "b1")].iloc[0]
    assert a["ci_high"] - 2.0 == pytest.approx(9.924843200918270 / math.sqrt(3), rel=1e-9)  # t_{0.995, 2}


# --- metric, values, methods: configuration errors ----------------------------------------------------


def test_a_metric_name_or_a_column_name_picks_the_column_and_its_direction():
    assert select.resolve_metric("insertion") == ("insertion_auc", True, ("insertion",))
    assert select.resolve_metric("insertion_auc") == ("insertion_auc", True, ("insertion",))
    assert select.resolve_metric("deletion") == ("deletion_auc", False, ("deletion",))
    assert select.resolve_metric("road_lerf") == ("road_lerf", True, ("road",))
    assert select.resolve_metric("insertion_minus_deletion") == ("insertion_minus_deletion", True,
                                                                 ("insertion", "deletion"))


def test_a_metric_with_several_columns_or_an_unknown_name_is_a_config_error_listing_the_choices():
    with pytest.raises(ConfigError, match=r"select\.metric=road.*road_morf.*road_lerf"):
        select.resolve_metric("road")
    with pytest.raises(ConfigError) as e:
        select.resolve_metric("insertoin")
    message = str(e.value)
    assert "select.metric" in message and "close matches: insertion" in message
    assert "deletion_auc" in message and "pointing_game" in message


def test_every_declared_main_hyperparameter_is_a_field_and_its_values_are_accepted():
    from cnnviz.core.constraints import check_values

    declared = 0
    for name in list_methods():
        cls = get_method(name)
        main = cls.main_hyperparameter
        if main is None:
            continue
        declared += 1
        field, values = main
        assert field in {f.name for f in dataclasses.fields(cls)}, name
        assert len(values) >= 2 and len(set(values)) == len(values), name
        for v in values:
            check_values(cls, {field: v}, f"method.{name}", trust_defaults=False)
    assert declared >= 4
    assert get_method("smoothgrad").main_hyperparameter[0] == "noise_level"
    assert get_method("gradcam").main_hyperparameter is None


def test_sweep_values_come_from_the_method_or_from_select_values():
    sg = get_method("smoothgrad")
    assert select.sweep_values("smoothgrad", sg, None) == ("noise_level", tuple(sg.main_hyperparameter[1]))
    assert select.sweep_values("smoothgrad", sg, [0.05, 0.3]) == ("noise_level", (0.05, 0.3))
    assert select.sweep_values("smoothgrad", sg, {"n_samples": [10, 20]}) == ("n_samples", (10, 20))
    assert select.sweep_values("smoothgrad", sg, []) is None  # no sweep: the configured value
    assert select.sweep_values("gradcam", get_method("gradcam"), None) is None
    assert select.sweep_values("gradcam", get_method("gradcam"), {"relu": [True, False]}) == ("relu", (True, False))


@pytest.mark.parametrize("values, match", [
    ([-0.1, 0.2], r"select\.values\.smoothgrad\.noise_level=-0\.1 is out of range"),
    ({"noise": [0.1]}, r"select\.values\.smoothgrad\.noise: unknown hyperparameter.*close matches: noise_level"),
    ({"noise_level": [0.1], "n_samples": [3]}, r"select\.values\.smoothgrad: one hyperparameter"),
    ("0.1", r"select\.values\.smoothgrad: a list of values"),
])
def test_bad_sweep_values_are_config_errors_naming_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        select.sweep_values("smoothgrad", get_method("smoothgrad"), values)


def test_values_for_a_method_without_a_main_hyperparameter_must_name_the_field():
    with pytest.raises(ConfigError, match=r"select\.values\.gradcam: gradcam declares no main hyperparameter.*relu"):
        select.sweep_values("gradcam", get_method("gradcam"), [True, False])


# --- Hydra: experiment=select composes; best.yaml runs as a primary config ----------------------------


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from cnnviz.app.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def test_experiment_select_composes_with_its_defaults_and_overrides():
    cfg = compose(["experiment=select"])
    assert cfg.select.layers == "all" and cfg.select.metric == "insertion"
    assert cfg.select.methods is None  # the method group's selection
    assert {"gradcam", "layercam", "smoothgrad"} <= set(cfg.method)
    assert "insertion" in cfg.metrics
    cfg = compose(["experiment=select", "select.methods=[gradcam,smoothgrad]", "select.metric=deletion",
                   "select.values={smoothgrad: [0.1, 0.2]}"])
    assert list(cfg.select.methods) == ["gradcam", "smoothgrad"] and cfg.select.metric == "deletion"
    assert list(cfg.select["values"]["smoothgrad"]) == [0.1, 0.2]  # DictConfig.values is a method
    assert compose([]).select is None  # other runs are unchanged


def test_an_unknown_select_key_is_refused_when_hydra_composes():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["experiment=select", "select.metrc=insertion"])


def test_best_yaml_composes_with_the_project_groups_and_a_new_image(tmp_path):
    """best.yaml is the primary config of ``--config-dir <run> --config-name best``: it pulls in
    conf/config.yaml, replaces the method and model groups and keeps the model as the selection ran it."""
    cfg = compose(["experiment=select", "model=benchmark_cnn", "model.weights=null", "target=label", "seed=3"])
    text = select.best_yaml(cfg, {"model": "benchmark_cnn"}, method="layercam", params={"relu": True, "fuse": False,
                                                                                      "gamma": 3.0},
                            layer="block3.2", header=["layercam @ block3.2"])
    (tmp_path / "best.yaml").write_text(text)
    import subprocess
    import sys

    proc = ok(subprocess.run([sys.executable, str(ROOT / "run.py"), "--config-dir", str(tmp_path), "--config-name", "best",
                              "image=spider", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=120))
    best = OmegaConf.create(yaml.safe_load(proc.stdout))
    assert list(best.method) == ["layercam"] and best.method.layercam.gamma == 3.0
    assert best.layer == "block3.2" and best.model.arch == "benchmark_cnn" and best.model.weights is None
    assert best.model.preprocess.input_size == 48 and best.model.default_layer == "block4"
    assert best.target == "label" and best.seed == 3 and list(best.image) == ["spider"]
    assert best.select is None and not best.metrics


@pytest.mark.parametrize("overrides, match", [
    (["select.metric=insertoin"], r"select\.metric.*close matches: insertion"),
    (["select.methods=[gradcam,gradcm]"], r"select\.methods: unknown method 'gradcm'.*close matches: gradcam"),
    (["select.methods=[gradcam]", "select.values={smoothgrad: [0.1]}"], r"select\.values\.smoothgrad: smoothgrad is not among"),
    (["select.values=[0.1]"], r"select\.values: a mapping from technique to values"),
    (["select.level=1.5"], r"select\.level=1\.5 is out of range"),
    (["select.top=0"], r"select\.top=0 is out of range"),
    (["select.methods=[]", "method=[]"], r"select\.methods is empty"),
])
def test_selection_config_errors_come_before_any_plan(overrides, match, tmp_path, monkeypatch):
    from cnnviz.app import plan

    monkeypatch.setattr(plan, "build_plan", lambda cfg: pytest.fail("no plan should be built"))
    cfg = compose(["experiment=select", "model=benchmark_cnn", "model.weights=null", *overrides])
    with pytest.raises(ConfigError, match=match):
        select.prepare_selection(cfg, tmp_path)


@pytest.mark.slow
def test_run_py_refuses_an_unknown_metric_before_any_work(tmp_path, image_cache):
    proc = run_cli(["experiment=select", "model=benchmark_cnn", "model.weights=null", "select.metric=insertoin",
                    "image=chelsea"], tmp_path / "run", image_cache)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "select.metric" in proc.stderr and "close matches: insertion" in proc.stderr
    assert not (tmp_path / "run" / "candidates").exists()


# --- end to end ------------------------------------------------------------------------------------------


def calibration(folder: Path, n: int) -> Path:
    from cnnviz.benchmark.data import make_dataset, save_split

    images, labels, masks = make_dataset(n, seed=1, size=48)
    save_split(folder, images, labels, masks)
    return folder / "images"


@pytest.mark.slow
def test_a_candidate_that_cannot_run_is_recorded_and_the_others_still_run(tmp_path, image_cache):
    """A random-init benchmark CNN (no training), two images: attention_rollout needs a transformer and
    fails as a candidate, Grad-CAM is chosen; the run exits 3 unless failures are allowed."""
    images = calibration(tmp_path / "calib", 2)
    args = ["experiment=select", "model=benchmark_cnn", "model.weights=null", "image=folder",
            f"image.folder.path={images}", "select.methods=[gradcam,attention_rollout]", "select.layers=[block4.2,block3.2]",
            "metrics.insertion.steps=5"]
    proc = run_cli(args, tmp_path / "run", image_cache)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "run" / "select.csv")
    failed = table[table["method"] == "attention_rollout"]  # one candidate per declared discard_ratio
    assert len(failed) == len(get_method("attention_rollout").main_hyperparameter[1])
    assert (failed["param"] == "discard_ratio").all() and (failed["status"] == "error").all()
    assert failed["error"].str.lower().str.contains("transformer").all() and failed["rank"].isna().all()
    ranked = table.dropna(subset=["rank"])
    assert set(ranked["layer"]) == {"block4.2", "block3.2"} and (ranked["n"] == 2).all()
    assert (tmp_path / "run" / "best.yaml").is_file()
    manifest = pd.read_csv(tmp_path / "run" / "manifest.csv")
    assert (manifest["status"] == "error").sum() == len(failed) and (manifest["status"] == "ok").sum() == 4
    again = run_cli(args + ["--allow-failures", "resume=true"], tmp_path / "run", image_cache)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.fixture
def trained_cache(image_cache) -> Path:
    """The session cache with the trained benchmark CNN in it: trained once per test session (under a
    minute on 2 idle cores), never taken from the user's own cache."""
    from cnnviz.benchmark.model import load_benchmark_cnn

    load_benchmark_cnn("trained", root=image_cache, progress=False)  # verifies the sha256, trains when missing
    return image_cache


@pytest.mark.slow
def test_select_on_the_benchmark_cnn_picks_a_layer_and_technique_and_best_yaml_runs(tmp_path, trained_cache):
    images = calibration(tmp_path / "calib", 8)
    run = tmp_path / "run"
    proc = ok(run_cli(["experiment=select", "model=benchmark_cnn", "image=folder", f"image.folder.path={images}",
                       "select.methods=[gradcam,layercam,smoothgrad]", "select.layers=all", "select.metric=insertion",
                       "select.values={smoothgrad: [0.1, 0.25]}", "method.smoothgrad.n_samples=8",
                       "metrics.insertion.steps=10"], run, trained_cache, timeout=900))
    table = pd.read_csv(run / "select.csv")
    assert list(table.columns[:9]) == ["method", "layer", "param", "value", "n", "mean", "ci_low", "ci_high", "rank"]
    assert (table["status"] == "ok").all(), table[["method", "layer", "error"]]
    cams = table[table["method"].isin(["gradcam", "layercam"])]
    assert cams["layer"].nunique() >= 12 and set(cams["layer"]) >= {"block1.2", "block4.2"}  # layer=all: every block's layers
    smooth = table[table["method"] == "smoothgrad"]
    assert sorted(smooth["value"]) == [0.1, 0.25] and (smooth["param"] == "noise_level").all()
    assert (table["n"] == 8).all()
    assert table["rank"].tolist() == list(range(1, len(table) + 1))
    assert table["mean"].is_monotonic_decreasing  # insertion: higher is better
    assert ((table["ci_low"] <= table["mean"]) & (table["mean"] <= table["ci_high"])).all()
    best = table.iloc[0]
    assert str(run / "best.yaml") in proc.stdout and best["method"] in proc.stdout

    # the report: the ranking plot and the top three candidates' maps, through relative links that exist
    page = (run / "select.html").read_text()
    assert 'src="select.png"' in page and (run / "select.png").read_bytes()[:4] == b"\x89PNG"
    import re

    links = re.findall(r'<img[^>]* src="([^"]+)"', page)
    maps = [link for link in links if link.startswith("candidates/")]
    assert len(maps) >= 3 and all((run / link).is_file() for link in maps)
    assert all(not Path(link).is_absolute() for link in links)

    # best.yaml runs on its own, with the chosen technique and layer, the model as used
    chosen = yaml.safe_load((run / "best.yaml").read_text())
    assert list(chosen["method"]) == [best["method"]] and chosen["model"]["weights"] == "trained"
    shown = calibration(tmp_path / "new", 2)
    again = ok(run_cli(["--config-dir", str(run), "--config-name", "best", "image=folder", f"image.folder.path={shown}"],
                       tmp_path / "best_run", trained_cache))
    manifest = pd.read_csv(tmp_path / "best_run" / "manifest.csv")
    assert (manifest["status"] == "ok").all() and set(manifest["method"]) == {best["method"]}
    if best["method"] in ("gradcam", "layercam"):
        assert set(manifest["layer"]) == {best["layer"]}
    else:
        assert manifest["params"].str.contains(f'"noise_level": {best["value"]}').all()
    assert "ok, 0 failed" in again.stdout
