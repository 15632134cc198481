"""Files made from an Attribution's extras: each writer's encoding round-trips."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnviz.output.writers import extra_files, parse
from cnnviz.output.render import curve_plot, image_strip


def frames(t=5, h=6, w=4, step=40):
    return np.stack([np.full((h, w, 3), step * i, np.uint8) for i in range(t)])


def test_strip_keeps_first_and_last_frame_in_order():
    strip = image_strip(frames(30, step=8), max_frames=4)
    assert strip.shape == (6, 4 * 4, 3)
    assert strip[0, ::4, 0].tolist() == [0, 8 * 10, 8 * 19, 8 * 29]


def test_gif_has_every_frame_and_loops():
    (_, suffix, data), = extra_files(("gif:snapshots",), {"snapshots": frames()})
    assert suffix == "snapshots.gif"
    gif = Image.open(io.BytesIO(data))
    assert gif.n_frames == 5 and gif.info.get("loop") == 0
    gif.seek(4)
    assert np.asarray(gif.convert("RGB"))[0, 0, 0] == 160


def test_csv_round_trips_and_plot_is_an_image():
    table = {"step": np.arange(4), "loss": np.array([3.0, 2.0, 1.5, 1.0])}
    out = dict((kind, (suffix, data)) for kind, suffix, data in extra_files(("csv:loss", "plot:loss"), {"loss": table}))
    back = pd.read_csv(io.BytesIO(out["csv_loss"][1]))
    assert list(back.columns) == ["step", "loss"] and back["loss"].tolist() == [3.0, 2.0, 1.5, 1.0]
    assert out["plot_loss"][0] == "loss_plot.png"
    assert Image.open(io.BytesIO(out["plot_loss"][1])).mode in ("RGB", "RGBA")
    assert curve_plot(table).ndim == 3


def test_absent_extra_is_skipped_and_a_bad_spec_names_the_writers():
    assert list(extra_files(("png:mask",), {})) == []
    with pytest.raises(ValueError, match="writer one of png"):
        parse("jpeg:mask")


@pytest.mark.parametrize("deflate", ["default", "zlib"])
@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 3), (7, 5, 4), (1, 1, 3), (224, 224, 3)])
def test_png_decodes_to_the_same_pixels(shape, deflate, monkeypatch):
    from cnnviz.output import files

    if deflate == "zlib":  # the fallback where ISA-L is not installed
        monkeypatch.setattr(files, "deflate", files._zlib_rle)
    a = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    a[..., :2] = 255  # bytes above 127 and wrap-around differences in the Sub filter
    a[1::2, 1::3] = 0
    back = np.asarray(Image.open(io.BytesIO(files.png_bytes(a))))
    assert back.dtype == np.uint8 and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


def test_png_of_other_arrays_goes_through_pillow():
    from cnnviz.output.files import png_bytes

    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    back = np.asarray(Image.open(io.BytesIO(png_bytes(mask))))
    np.testing.assert_array_equal(back.astype(bool), mask)
