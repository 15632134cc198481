"""Files made from an Attribution: one registry of writers (renders, raw arrays, extras, legends,
boxes), the rows of a call, and each writer's encoding round-trips."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnviz.output.writers import extra_files, parse
from cnnviz.output import items, render, writers
from cnnviz.core.attribution import Attribution
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
    with pytest.raises(ValueError, match="writer one of render, raw, png, .*legend, box"):
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


class Legend:
    """A label map with its classes and colours, as a technique returns it (duck-typed: output/
    never imports a technique's types)."""

    def __init__(self):
        self.image = np.zeros((6, 8, 3), np.uint8)
        self.image[:, 4:] = (200, 10, 10)
        self.classes = (3,)
        self.colors = np.array([[200, 10, 10]], np.uint8)


def cam_attribution(**extras):
    rng = np.random.default_rng(0)
    return Attribution(method="gradcam", values=rng.random((1, 3, 4)).astype(np.float32),
                       logits=np.array([[0.0, 1.0, 2.0, 3.0]]), target=(3,), layer="block",
                       upsampled=rng.random((1, 6, 8)).astype(np.float32), metrics={"gap": 0.5}, extras=extras)


def test_every_file_and_column_of_a_row_comes_from_the_one_registry(tmp_path):
    mask = np.full((6, 8), 255, np.uint8)
    attr = cam_attribution(mask=mask, legend=Legend(), bbox=(1, 2, 5, 4))
    specs = writers.outputs(("cam_gray", "cam_on_image"), ("png:mask", "legend:legend"))
    assert specs == ("render:cam_gray", "render:cam_on_image", "raw:values", "raw:upsampled", "png:mask",
                     "legend:legend", "box:bbox")
    picture = np.full((6, 8, 3), 90, np.uint8)
    call = items.Call("dog", picture, [attr], specs, class_names=["a", "b", "c", "cat"], meta={"model": "m"},
                      to_original=lambda box: [2 * v for v in box], warnings=("first frame only",))
    row, = items.rows(call, tmp_path, render.RenderOptions(colormap="viridis", alpha=0.5))
    files = {k[len("file_"):]: v for k, v in row.items() if k.startswith("file_")}
    assert files == {"input": "dog_input.png", "cam_gray": "dog_gradcam_block_cam_gray.png",
                     "cam_on_image": "dog_gradcam_block_cam_on_image.png", "npy": "dog_gradcam_block.npy",
                     "npy_upsampled": "dog_gradcam_block_upsampled.npy", "png_mask": "dog_gradcam_block_mask.png",
                     "png_legend": "dog_gradcam_block_legend.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files.values())  # nothing written beside them
    for kind, name in files.items():
        assert row[f"sha256_{kind}"] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    # the render options reach the renders; the class names (data) reach the legend
    overlay = render.cam_on_image(attr.upsampled[0], picture, 0.5, "viridis")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / files["cam_on_image"])), overlay)
    legend = render.label_legend(Legend().image, Legend().colors, ["3 cat"])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / files["png_legend"]).convert("RGB")), legend)
    # the box in original pixels through the mapping given as data; metrics and run columns kept
    assert [row[k] for k in ("box_x0", "box_y0", "box_x1", "box_y1")] == [2, 4, 10, 8]
    assert (row["target"], row["target_name"], row["predicted_name"], row["gap"], row["model"]) == (3, "cat", "cat", 0.5, "m")
    assert row["warnings"] == "first frame only" and row["status"] == "ok" and row["layers_in_call"] == 1


def test_without_a_box_mapping_the_box_stays_in_input_pixels_and_absent_extras_write_nothing(tmp_path):
    attr = cam_attribution(bbox=(1.6, 2, 5, 4))
    row, = items.rows(items.Call("x", np.zeros((6, 8, 3), np.uint8), [attr], writers.outputs((), ("png:mask", "legend:legend"))),
                      tmp_path, render.RenderOptions())
    assert [row[k] for k in ("box_x0", "box_y0", "box_x1", "box_y1")] == [1, 2, 5, 4]
    assert not any(k.endswith(("_mask", "_legend")) for k in row)


def test_a_new_output_is_one_registered_writer(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "WRITERS", dict(writers.WRITERS))

    @writers.writer("txt")
    def txt(item, key):
        return item.file(f"txt_{key}", f"{item.stem}_{key}.txt", str(item.attr.extras[key]).encode())

    with pytest.raises(ValueError, match="already registered"):
        writers.writer("txt")(txt)
    row, = items.rows(items.Call("x", np.zeros((6, 8, 3), np.uint8), [cam_attribution(note="hello")], ("txt:note",)),
                      tmp_path, render.RenderOptions())
    assert row["file_txt_note"] == "x_gradcam_block_note.txt" and (tmp_path / row["file_txt_note"]).read_text() == "hello"


def test_render_options_are_declared_once_and_the_runner_config_reuses_them():
    import dataclasses

    from cnnviz.app.schema import RenderConfig
    from cnnviz.core.errors import ConfigError

    ours, theirs = dataclasses.fields(render.RenderOptions), dataclasses.fields(RenderConfig)
    assert [(f.name, f.default, f.metadata) for f in ours] == [(f.name, f.default, f.metadata) for f in theirs]
    config = RenderConfig()
    config.alpha = 0.7  # Hydra overrides a structured config's fields: it must not be frozen
    with pytest.raises(ConfigError, match=r"render\.alpha=2"):
        render.RenderOptions(alpha=2)
    with pytest.raises(ConfigError, match=r"render\.colormap"):
        render.RenderOptions(colormap="no_such_map")
