"""Exact object masks: a list's ``mask`` column and the benchmark's planted objects reach the metrics
through the same resize and crop as the image (relevance mass / rank, the pointing game)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from cnnviz.core.errors import ConfigError
from cnnviz.data.images import box_to_input, mask_to_input, read_mask
from cnnviz.data.lists import list_sources

from conftest import ok, run_cli


def _pre(size, resize="stretch", crop_pct=1.0):
    return OmegaConf.create({"input_size": size, "resize": resize, "crop_pct": crop_pct, "interpolation": "bilinear",
                             "mean": [0.5] * 3, "std": [0.5] * 3})


def test_a_stretched_mask_repeats_each_pixel_in_a_block():
    rng = np.random.default_rng(0)
    mask = rng.random((6, 8)) < 0.4
    out = mask_to_input(mask, (8, 6), _pre(24))
    # 8 -> 24 columns is 3x, 6 -> 24 rows is 4x: nearest neighbour repeats each pixel in a 4 x 3 block
    np.testing.assert_array_equal(out, np.repeat(np.repeat(mask, 4, axis=0), 3, axis=1))


def test_a_center_cropped_mask_lands_where_box_to_input_puts_its_box():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 22:50] = True  # a rectangle: its mapped box must be box_to_input's box
    pre = _pre(16, "center_crop", crop_pct=0.8)  # short side 40 -> 20, width 60 -> 30, crop 16 x 16 at (7, 2)
    out = mask_to_input(mask, (60, 40), pre)
    assert out.shape == (16, 16)
    ys, xs = np.nonzero(out)
    x0, y0, x1, y1 = box_to_input((22, 10, 50, 30), (60, 40), pre)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (round(x0), round(y0), round(x1), round(y1))


def test_a_mask_of_another_size_than_its_image_is_refused():
    with pytest.raises(ValueError, match="8x6.*image is 9x6"):
        mask_to_input(np.ones((6, 8), bool), (9, 6), _pre(24))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "1"])
def test_any_non_zero_pixel_of_a_mask_file_is_object(tmp_path, mode):
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    img = Image.fromarray(mask.astype(np.uint8) * 200)
    img = img.convert(mode, dither=Image.Dither.NONE) if mode == "1" else img.convert(mode)
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)


def test_a_missing_or_broken_mask_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.png"):
        read_mask(tmp_path / "nope.png", "image.list.path: row 2: mask")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="not a readable mask"):
        read_mask(tmp_path / "bad.png")


def _list(tmp_path: Path, rows: list[dict]) -> Path:
    listed = tmp_path / "list.csv"
    with open(listed, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "target", "mask"])
        w.writeheader()
        w.writerows(rows)
    return listed


def test_a_list_reads_its_mask_column_relative_to_the_list_and_only_when_asked(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    mask = np.eye(4, dtype=bool)
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "a_mask.png")
    listed = _list(tmp_path, [{"path": "a.png", "target": 1, "mask": "a_mask.png"},
                              {"path": "a.png", "target": 2, "mask": ""}])
    cfg = OmegaConf.create({"path": str(listed), "limit": None, "shuffle": False, "seed": 0})
    first, second = list_sources("image.list", cfg)
    np.testing.assert_array_equal(first.mask(), mask)
    assert second.mask is None
    (tmp_path / "a_mask.png").unlink()  # nothing was read while listing: the error comes when it is read
    with pytest.raises(ConfigError, match="a_mask.png"):
        first.mask()


def test_the_benchmark_source_gives_labelled_images_with_their_exact_masks():
    from cnnviz.benchmark.data import CLASSES, HELD_OUT_SEED, IMAGE_SIZE, make_sample
    from cnnviz.app.plan import image_sources

    sources = image_sources("benchmark", OmegaConf.create({"source": "benchmark", "limit": 6, "seed": HELD_OUT_SEED}))
    assert [s.default_target for s in sources] == [i % len(CLASSES) for i in range(6)]
    for i, s in enumerate(sources):
        sample = make_sample(HELD_OUT_SEED, i, IMAGE_SIZE)
        img, sha = s.read()
        np.testing.assert_array_equal(np.asarray(img), sample.image)
        np.testing.assert_array_equal(s.mask(), sample.mask)
        assert s.name.startswith(CLASSES[sample.label])
    with pytest.raises(ConfigError, match="image.benchmark.limit"):
        image_sources("benchmark", OmegaConf.create({"source": "benchmark", "limit": 0, "seed": 1}))


@pytest.mark.slow
def test_relevance_mass_and_rank_in_a_run_use_the_exact_mask_not_its_box(tmp_path):
    """End to end: the manifest's relevance mass equals the hand computation on the saved upsampled map
    with the mask file, and differs from what the bounding box would give."""
    from test_benchmark_data import _seed_cache

    from cnnviz.benchmark import data
    from cnnviz.metrics.pointing_game import box_mask

    cache = tmp_path / "cache"
    _seed_cache(cache, "trained")
    images, labels, masks = data.make_dataset(3, seed=1, size=48)
    listed = data.save_split(tmp_path / "held", images, labels, masks)
    ok(run_cli(["model=benchmark_cnn", "image=list", f"image.list.path={listed}", "method=gradcam", "target=label",
                "metrics=[relevance_mass,relevance_rank]"], tmp_path / "run", cache))
    frame = pd.read_csv(tmp_path / "run" / "manifest.csv")
    assert (frame["status"] == "ok").all(), frame["error"].tolist()
    differs = 0
    for (_, row), mask in zip(frame.iterrows(), masks):
        cam = np.load(tmp_path / "run" / row["file_npy_upsampled"]).astype(np.float64)
        pos = np.maximum(cam, 0)
        assert row["relevance_mass"] == pytest.approx(pos[mask].sum() / pos.sum(), abs=1e-6)
        top = np.argsort(-cam.ravel(), kind="stable")[: mask.sum()]
        assert row["relevance_rank"] == pytest.approx(mask.ravel()[top].mean(), abs=1e-6)
        box = box_mask(mask.shape, data.mask_box(mask))
        differs += abs(pos[box].sum() / pos.sum() - row["relevance_mass"]) > 1e-3
    assert differs  # a box holds background too: on these shapes it gives other numbers
