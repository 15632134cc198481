"""summary.html: the metric summary as a page (ranking table, box plots, mean curves of the top groups),
linked from index.html; hand-made frames and curve CSVs, one run.py run, one headless Chromium check."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnnviz.output.gallery import write_gallery
from cnnviz.output.report import mean_curve, write_report
from cnnviz.output.summary import summarize, write_summary

from conftest import ok, run_cli

# (method, layer) -> per-image (deletion AUC, insertion AUC); ranked by insertion − deletion:
# a@l1 (0.6), b@l1 (0.45), a@l2 (0.2), b@l2 (−0.8)
VALUES = {("a", "l1"): [(0.1, 0.9), (0.2, 0.8), (0.3, 0.7)],
          ("a", "l2"): [(0.4, 0.6), (0.4, 0.6), (0.4, 0.6)],
          ("b", "l1"): [(0.05, 0.5), (0.05, 0.5), (0.05, 0.5)],
          ("b", "l2"): [(0.9, 0.1), (0.9, 0.1), (0.9, 0.1)]}
RANKED = [("a", "l1"), ("b", "l1"), ("a", "l2"), ("b", "l2")]


def deletion_probs(group: int, image: int) -> list[float]:
    """A different deletion curve per row: p(0) = 1, p(0.5) = 0.1 (image + 1) + group, p(1) = 0.01 group."""
    return [1.0, 0.1 * (image + 1) + group, 0.01 * group]


def write_csv(folder: Path, name: str, table: dict) -> str:
    pd.DataFrame(table).to_csv(folder / name, index=False)
    return name


def hand_made_run(folder: Path) -> pd.DataFrame:
    """A manifest frame and its curve CSVs in ``folder``: deletion curves for every ok row (one file listed
    but absent: a@l2 on img2; b@l2's rows list none), sanity curves for b@l1 only, and one error row."""
    rows = []
    for g, ((method, layer), per_image) in enumerate(VALUES.items()):
        for i, (d, ins) in enumerate(per_image):
            stem = f"img{i}_{method}_{layer}"
            row = {"image": f"img{i}", "model": "m", "method": method, "layer": layer, "status": "ok",
                   "deletion_auc": d, "insertion_auc": ins, "file_csv_deletion_curve": f"{stem}_deletion_curve.csv"}
            if (method, layer) == ("b", "l2"):
                row["file_csv_deletion_curve"] = None
            elif (method, layer, i) != ("a", "l2", 2):
                write_csv(folder, row["file_csv_deletion_curve"], {"fraction": [0.0, 0.5, 1.0], "probability": deletion_probs(g, i)})
            if (method, layer) == ("b", "l1"):
                row["file_csv_sanity_curve"] = write_csv(folder, f"{stem}_sanity_curve.csv", {
                    "layers_randomised": [0, 2, 4], "spearman": [1.0, 0.5 - 0.1 * i, 0.1 * i], "ssim": [1.0, 0.6, 0.3]})
            rows.append(row)
    rows.append({"image": "img0", "model": "m", "method": "b", "layer": "l2", "status": "error", "error": "boom"})
    return pd.DataFrame(rows)


class Tables(HTMLParser):
    """The text of every cell of every ``<table>`` row, and every ``src`` / ``href`` of the page."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.refs: list[str] = []
        self.imgs = 0
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.imgs += 1
        for key in ("src", "href"):
            if attrs.get(key):
                self.refs.append(attrs[key])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parsed(page: Path) -> Tables:
    t = Tables()
    t.feed(page.read_text())
    return t


def ranking(page: Path) -> pd.DataFrame:
    """The ranking table of summary.html as a frame of strings (the first table row is its header)."""
    rows = parsed(page).rows
    return pd.DataFrame(rows[1:], columns=[c.rstrip(" ↑↓") for c in rows[0]])  # the arrows say which way is better


@pytest.fixture
def run_dir(tmp_path) -> tuple[Path, pd.DataFrame]:
    return tmp_path, hand_made_run(tmp_path)


def test_page_lists_the_groups_in_rank_order(run_dir):
    folder, frame = run_dir
    write_summary(folder, frame)
    table = ranking(folder / "summary.html")
    assert list(zip(table.method, table.layer)) == RANKED
    assert list(table["rank"]) == ["1", "2", "3", "4"] and list(table.n) == ["3"] * 4  # the error row is left out
    assert "insertion minus deletion" in (folder / "summary.html").read_text()  # what ranks the table


def test_the_table_shows_the_frames_means_and_stds(run_dir):
    folder, frame = run_dir
    write_summary(folder, frame)
    table = ranking(folder / "summary.html").set_index(["method", "layer"])
    good = frame[frame.status == "ok"].assign(d=lambda f: f.insertion_auc - f.deletion_auc)
    for (method, layer), rows in good.groupby(["method", "layer"]):
        for column, header in (("deletion_auc", "deletion auc"), ("insertion_auc", "insertion auc"), ("d", "insertion minus deletion")):
            mean, std = table.loc[(method, layer), header].split(" ± ")
            assert float(mean) == pytest.approx(rows[column].mean(), abs=1e-4), (method, layer, column)
            assert float(std) == pytest.approx(rows[column].std(ddof=1), abs=1e-4), (method, layer, column)


def test_mean_curve_is_the_mean_of_the_rows_curves_and_missing_files_are_skipped(run_dir):
    folder, frame = run_dir
    a_l1 = frame[(frame.method == "a") & (frame.layer == "l1")]
    curve = mean_curve(folder, a_l1.file_csv_deletion_curve)
    assert curve.x_name == "fraction" and curve.n == 3 and curve.missing == 0
    np.testing.assert_allclose(curve.x, [0, 0.5, 1])
    np.testing.assert_allclose(curve.series["probability"], np.mean([deletion_probs(0, i) for i in range(3)], axis=0))
    a_l2 = frame[(frame.method == "a") & (frame.layer == "l2")]
    curve = mean_curve(folder, a_l2.file_csv_deletion_curve)  # img2's file is listed but absent
    assert curve.n == 2 and curve.missing == 1
    np.testing.assert_allclose(curve.series["probability"], np.mean([deletion_probs(1, i) for i in range(2)], axis=0))  # a@l2 is group 1
    assert mean_curve(folder, [None, float("nan"), "nowhere.csv"]) is None


def test_the_page_plots_the_mean_curves_of_the_top_groups_and_skips_missing_ones(run_dir):
    folder, frame = run_dir
    write_summary(folder, frame)  # summary.csv, which the page links
    write_report(folder, frame, summarize(frame), top=3)
    curves = pd.read_csv(folder / "summary_curves.csv")  # what the curve plots draw
    deletion = curves[curves.curve == "deletion_curve"]
    # top 3 groups with deletion curves: a@l1, b@l1, a@l2 (b@l2 lists none and is 4th anyway)
    assert list(dict.fromkeys(zip(deletion.method, deletion.layer))) == RANKED[:3]
    for g, (method, layer) in enumerate(VALUES):
        if (method, layer) not in RANKED[:3]:
            continue
        rows = deletion[(deletion.method == method) & (deletion.layer == layer)].sort_values("x")
        images = 2 if (method, layer) == ("a", "l2") else 3
        assert set(rows.n) == {images}
        np.testing.assert_allclose(rows["mean"], np.mean([deletion_probs(g, i) for i in range(images)], axis=0))
    sanity = curves[curves.curve == "sanity_curve"]
    assert set(zip(sanity.method, sanity.layer)) == {("b", "l1")} and set(sanity.series) == {"spearman", "ssim"}
    spearman = sanity[sanity.series == "spearman"].sort_values("x")
    np.testing.assert_allclose(spearman["mean"], [1.0, 0.4, 0.1])
    page = (folder / "summary.html").read_text()
    assert "1 listed curve file(s) missing" in page  # a@l2's img2
    for ref in ("summary_deletion_curve.png", "summary_sanity_curve.png", "summary_box.png", "summary.csv", "summary_curves.csv"):
        assert f'"{ref}"' in page and (folder / ref).is_file(), ref


def test_a_frame_without_curve_files_gets_a_page_without_curves(tmp_path):
    frame = hand_made_run(tmp_path).drop(columns=["file_csv_deletion_curve", "file_csv_sanity_curve"])
    write_summary(tmp_path, frame)
    page = (tmp_path / "summary.html").read_text()
    assert "summary_box.png" in page and "_curve.png" not in page
    assert not (tmp_path / "summary_curves.csv").exists() and "summary_curves.csv" not in page


def test_no_metrics_no_page(tmp_path):
    frame = hand_made_run(tmp_path).drop(columns=["deletion_auc", "insertion_auc"])
    assert write_summary(tmp_path, frame).empty
    assert not (tmp_path / "summary.html").exists()


def test_names_are_escaped(tmp_path):
    frame = hand_made_run(tmp_path)
    frame.loc[frame.method == "a", "method"] = '<script>alert("x")</script>'
    frame.loc[frame.layer == "l2", "layer"] = 'l2 & "q"'
    write_summary(tmp_path, frame)
    page = (tmp_path / "summary.html").read_text()
    assert "<script>" not in page and 'l2 & "q"' not in page
    assert html.escape('<script>alert("x")</script>') in page and html.escape('l2 & "q"') in page
    table = ranking(tmp_path / "summary.html")
    assert list(table.method)[0] == '<script>alert("x")</script>' and list(table.layer)[2] == 'l2 & "q"'


@pytest.mark.parametrize("order", ["gallery first", "summary first"])
def test_index_links_the_summary_whichever_is_written_first(tmp_path, order):
    frame = hand_made_run(tmp_path)
    steps = [lambda: write_gallery(tmp_path, frame), lambda: write_summary(tmp_path, frame)]
    for step in (steps if order == "gallery first" else steps[::-1]):
        step()
    index = (tmp_path / "index.html").read_text()
    assert index.count('href="summary.html"') == 1
    write_summary(tmp_path, frame)  # again: still one link
    assert (tmp_path / "index.html").read_text().count('href="summary.html"') == 1


def test_index_has_no_summary_link_without_metrics(tmp_path):
    frame = hand_made_run(tmp_path).drop(columns=["deletion_auc", "insertion_auc"])
    write_gallery(tmp_path, frame)
    write_summary(tmp_path, frame)
    assert "summary.html" not in (tmp_path / "index.html").read_text()


# --- end to end ---------------------------------------------------------------------------------------

E2E = ["model=benchmark_cnn", "model.weights=null", "image=benchmark", "image.benchmark.limit=2", "layer=[block3,block4]",
       "metrics=[deletion,insertion,road,sanity_model_randomization]", "metrics.deletion.steps=4", "metrics.insertion.steps=4",
       "metrics.road.percentages=[25,50,75]", "metrics.sanity_model_randomization.curve=true",
       "metrics.sanity_model_randomization.steps=2"]


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, image_cache) -> Path:
    """One run.py run: a random-init benchmark CNN, 2 images, Grad-CAM at 2 layers, four metrics with curves."""
    folder = tmp_path_factory.mktemp("report") / "run"
    ok(run_cli(E2E, folder, image_cache))
    return folder


@pytest.mark.slow  # end to end: run.py
def test_run_writes_a_summary_page_linked_from_the_gallery(report_run):
    page = report_run / "summary.html"
    assert page.is_file()
    assert parsed(report_run / "index.html").refs.count("summary.html") == 1
    refs = parsed(page).refs
    assert refs and all(not re.match(r"^(/|[a-z]+:)", r) for r in refs), refs  # relative links only
    missing = [r for r in refs if not (report_run / r).is_file()]
    assert not missing, missing
    table = ranking(page)
    assert sorted(table.layer) == ["block3", "block4"] and set(table.method) == {"gradcam"}
    for key in ("deletion_curve", "insertion_curve", "road_curve", "sanity_curve"):
        assert f"summary_{key}.png" in refs, key
    assert "summary_box.png" in refs and "index.html" in refs
    curves = pd.read_csv(report_run / "summary_curves.csv")
    assert set(curves.curve) == {"deletion_curve", "insertion_curve", "road_curve", "sanity_curve"} and set(curves.n) == {2}


@pytest.mark.slow  # end to end: run.py and chromium
@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless chromium is not installed (CI installs it: .ci/run)")
def test_summary_page_images_load_in_headless_chromium(report_run, tmp_path):
    """Every <img> of summary.html decodes in a browser (naturalWidth > 0): a copy of the page beside it
    (so its relative links resolve) records the widths on the body once the page has loaded."""
    probe = report_run / "_probe_summary.html"
    script = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-widths', "
              "[...document.images].map(i => i.naturalWidth).join(',')))</script>")
    probe.write_text((report_run / "summary.html").read_text().replace("</body>", script + "</body>"))
    try:
        proc = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        probe.unlink()
    found = re.search(r'data-widths="([^"]*)"', proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    widths = [int(w) for w in found.group(1).split(",")]
    assert len(widths) == parsed(report_run / "summary.html").imgs >= 5  # box plot + 4 curve figures
    assert all(w > 0 for w in widths), widths


def test_box_stats_match_matplotlibs_boxplot_stats():
    from matplotlib.cbook import boxplot_stats

    from cnnviz.output.report import box_stats

    values = np.r_[np.random.default_rng(0).normal(size=50), 8.0, -9.0, np.nan]
    ours, ref = box_stats(values), boxplot_stats(values[~np.isnan(values)])[0]
    for name, key in (("q1", "q1"), ("median", "med"), ("q3", "q3"), ("low", "whislo"), ("high", "whishi"), ("mean", "mean")):
        assert getattr(ours, name) == pytest.approx(ref[key]), name
    assert sorted(ours.fliers) == sorted(ref["fliers"]) and -9.0 in ours.fliers and 8.0 in ours.fliers
    assert box_stats(np.array([np.nan])) is None
