"""Issue 21, inputs: EXIF orientation, non-finite pixels, the size an image is resized to, and
messages that say what a path is, what happened to a bad cached preset, which files a folder
skips and which frame of a multi-frame image is used."""
from __future__ import annotations

import hashlib
import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cnnviz.data import images as imaging
from cnnviz.app.schema import ImageConfig, PreprocessConfig
from cnnviz.core.errors import ConfigError
from cnnviz.api import explain
from cnnviz.data.images import fetch_preset, preprocess, read_image, sources_from_config, to_rgb

from conftest import TinyCNN

# the run.py processes started here get one intra-op thread: see conftest.one_thread_children
pytestmark = pytest.mark.usefixtures("one_thread_children")

ORIENTATION = 0x0112

#: how a camera stores an upright picture U for each EXIF orientation (EXIF 2.3, tag 274: "the 0th
#: row is the visual top / right-hand side / ..."), written with numpy so that the test does not
#: borrow Pillow's own table
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1],
    5: lambda u: u.transpose(1, 0, 2),
    6: lambda u: np.rot90(u, 1),
    7: lambda u: np.rot90(u, 1)[:, ::-1],
    8: lambda u: np.rot90(u, -1),
}
#: what a viewer does to the stored pixels to show them upright
UPRIGHT = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],
    3: lambda s: s[::-1, ::-1],
    4: lambda s: s[::-1],
    5: lambda s: s.transpose(1, 0, 2),
    6: lambda s: np.rot90(s, -1),
    7: lambda s: np.rot90(s[:, ::-1], -1),
    8: lambda s: np.rot90(s, 1),
}


def upright_picture(w: int = 40, h: int = 24, seed: int = 0) -> np.ndarray:
    """A picture whose every flip and rotation differs (a gradient plus noise, not square)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], axis=-1)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def save_oriented(path: Path, upright: np.ndarray, orientation: int, fmt: str, **kw) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    stored = np.ascontiguousarray(STORED[orientation](upright))
    Image.fromarray(stored).save(path, fmt, exif=exif, **kw)


def pre(**kw):
    return OmegaConf.structured(PreprocessConfig(**kw))


def image_cfg(**kw):
    return OmegaConf.structured(ImageConfig(**kw))


@pytest.fixture(autouse=True)
def _fresh_read_cache(monkeypatch):
    """Files here are rewritten under one name; the decoded-image cache must not serve old pixels."""
    monkeypatch.setattr(imaging, "_READ_CACHE", {})


# --- point 9: orientation --------------------------------------------------------------------


def test_the_orientation_tables_are_inverse():
    u = upright_picture()
    for o in range(1, 9):
        assert np.array_equal(UPRIGHT[o](STORED[o](u)), u), o


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt,suffix,kw", [("PNG", ".png", {}), ("WEBP", ".webp", {"lossless": True}),
                                           ("TIFF", ".tif", {}), ("TIFF", ".tif", {"compression": "tiff_lzw"})],
                         ids=["png", "webp", "tiff", "tiff-lzw"])
def test_every_exif_orientation_reads_upright_in_lossless_formats(tmp_path, orientation, fmt, suffix, kw):
    u = upright_picture()
    f = tmp_path / f"o{orientation}{suffix}"
    save_oriented(f, u, orientation, fmt, **kw)
    img, sha = read_image(f)
    assert img.size == (u.shape[1], u.shape[0])
    assert np.array_equal(np.asarray(img), u)
    assert sha == hashlib.sha256(f.read_bytes()).hexdigest()  # the file's bytes, not the turned pixels


def jpeg_pair(tmp_path: Path, orientation: int) -> tuple[Path, np.ndarray]:
    """A JPEG with the orientation tag, and the upright pixels a viewer shows for it: the same
    stored pixels saved without the tag decode to the same values (EXIF does not touch the
    compressed data), and turning decoded pixels is exact."""
    u = upright_picture(48, 32, seed=orientation)
    stored = np.ascontiguousarray(STORED[orientation](u))
    tagged, plain = tmp_path / f"tagged{orientation}.jpg", tmp_path / f"plain{orientation}.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(stored).save(tagged, "JPEG", quality=90, exif=exif)
    Image.fromarray(stored).save(plain, "JPEG", quality=90)
    decoded = np.asarray(Image.open(plain).convert("RGB"))
    return tagged, np.ascontiguousarray(UPRIGHT[orientation](decoded))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_of_a_jpeg_reads_upright(tmp_path, orientation):
    tagged, upright = jpeg_pair(tmp_path, orientation)
    img, sha = read_image(tagged)
    assert np.array_equal(np.asarray(img), upright)
    assert sha == hashlib.sha256(tagged.read_bytes()).hexdigest()


def test_exif_6_jpeg_gives_the_model_input_of_its_upright_copy(tmp_path):
    tagged, upright = jpeg_pair(tmp_path, 6)
    p = pre(input_size=16, crop_pct=0.875)
    x_tagged, pic_tagged = preprocess(read_image(tagged)[0], p)
    x_upright, pic_upright = preprocess(Image.fromarray(upright), p)
    assert torch.equal(x_tagged, x_upright)
    assert np.array_equal(pic_tagged, pic_upright)


@pytest.mark.parametrize("as_path", [True, False], ids=["path", "pil-image"])
def test_exif_6_jpeg_explains_like_its_upright_copy(tmp_path, as_path):
    """``explain`` with a path or with an opened PIL image (the notebook path) turns the picture
    first: same map, same picture, and the original size of the upright picture."""
    tagged, upright = jpeg_pair(tmp_path, 6)
    upright_file = tmp_path / "upright.png"
    Image.fromarray(upright).save(upright_file)
    p = pre(input_size=24, crop_pct=1.0, resize="stretch")
    model = TinyCNN().eval()
    with Image.open(tagged) as opened:
        got = explain(model, tagged if as_path else opened, "gradcam", layer="features.2", target=1,
                      preprocess_config=p)
    want = explain(model, upright_file, "gradcam", layer="features.2", target=1, preprocess_config=p)
    assert np.array_equal(got.picture, want.picture)
    assert np.array_equal(got.attributions[0].values, want.attributions[0].values)
    assert got.original_size == want.original_size == (upright.shape[1], upright.shape[0])


def test_to_rgb_turns_an_in_memory_image_with_an_orientation_tag(tmp_path):
    tagged, upright = jpeg_pair(tmp_path, 8)
    with Image.open(tagged) as img:
        assert np.array_equal(np.asarray(to_rgb(img)), upright)


# --- point 10: non-finite pixels ------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_non_finite_values_is_refused(tmp_path, bad):
    a = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    a[2, 3] = bad
    f = tmp_path / "float.tif"
    Image.fromarray(a).save(f)
    assert Image.open(f).mode == "F"
    with pytest.raises(ConfigError) as e:
        read_image(f, key="image.file")
    msg = str(e.value)
    assert msg.startswith("image.file") and str(f) in msg
    assert "contains NaN/Inf values" in msg
    assert "not a readable image" not in msg


def test_finite_float_tiff_is_still_min_max_scaled(tmp_path):
    a = np.array([[-1.0, 0.0, 3.0]], dtype=np.float32)
    Image.fromarray(a).save(tmp_path / "f.tif")
    out = np.asarray(read_image(tmp_path / "f.tif")[0])[..., 0].astype(int)
    assert out[0].tolist() == [0, 64, 255]  # (v + 1) / 4 * 255


def test_in_memory_float_image_with_nan_is_refused_by_explain():
    a = np.ones((8, 8), dtype=np.float32)
    a[0, 0] = np.nan
    with pytest.raises(ConfigError, match="contains NaN/Inf values"):
        to_rgb(Image.fromarray(a))
    with pytest.raises(ConfigError, match="contains NaN/Inf values"):
        explain(TinyCNN().eval(), Image.fromarray(a), "gradcam", layer="features.2", target=0,
                preprocess_config=pre(input_size=8, resize="stretch"))


# --- point 11: the size after resizing ------------------------------------------------------


def test_the_sliver_of_the_issue_is_refused_before_resizing():
    """2 x 20000 px: center_crop at 224 (256 before the crop) would make it 256 x 2560000."""
    sliver = Image.new("RGB", (2, 20000), (10, 20, 30))
    with pytest.raises(ConfigError) as e:
        preprocess(sliver, pre(input_size=224, crop_pct=0.875, resize="center_crop"))
    msg = str(e.value)
    assert "256x2560000" in msg and f"{256 * 2560000:,}" in msg
    assert f"{imaging.MAX_RESIZED_PIXELS:,}" in msg
    assert "model.preprocess.resize=stretch" in msg
    # stretch is the way out, and it does not change the answer for this picture
    x, picture = preprocess(sliver, pre(input_size=224, resize="stretch"))
    assert x.shape == (1, 3, 224, 224) and picture[0, 0].tolist() == [10, 20, 30]


def test_the_sliver_is_refused_from_a_file_too(tmp_path):
    f = tmp_path / "sliver.png"
    Image.new("RGB", (20000, 2), (1, 2, 3)).save(f)
    img, _ = read_image(f)
    with pytest.raises(ConfigError, match=r"2560000x256"):
        preprocess(img, pre(input_size=224, crop_pct=0.875, resize="center_crop"))


@pytest.mark.parametrize("mode,size,expect", [
    # keep_aspect: the resized image is the model input (short side 10 -> 10 x 30 = 300)
    ("keep_aspect", (5, 15), "10x30"),
    # center_crop: the intermediate resize before the crop counts (short side 20 -> 20 x 60 = 1200)
    ("center_crop", (5, 15), "20x60"),
])
def test_every_resize_mode_is_limited(monkeypatch, mode, size, expect):
    monkeypatch.setattr(imaging, "MAX_RESIZED_PIXELS", 250)
    p = pre(input_size=10, crop_pct=0.5, resize=mode)
    with pytest.raises(ConfigError) as e:
        preprocess(Image.new("RGB", size), p)
    msg = str(e.value)
    assert expect in msg and "250" in msg and f"model.preprocess.resize={mode}" in msg
    assert "model.preprocess.resize=stretch" in msg


def test_stretch_to_an_input_over_the_limit_names_input_size(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_RESIZED_PIXELS", 100)
    with pytest.raises(ConfigError) as e:
        preprocess(Image.new("RGB", (4, 4)), pre(input_size=11, resize="stretch"))
    assert "11x11" in str(e.value) and "model.preprocess.input_size" in str(e.value)
    assert preprocess(Image.new("RGB", (4, 4)), pre(input_size=10, resize="stretch"))[0].shape == (1, 3, 10, 10)


@pytest.mark.parametrize("mode", ["center_crop", "keep_aspect"])
def test_exactly_at_the_limit_is_allowed_and_unchanged(monkeypatch, mode):
    """A resize to exactly the limit is allowed, and gives what plain Pillow arithmetic gives."""
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (9, 27, 3), dtype=np.uint8))  # 27 x 9
    p = pre(input_size=10, crop_pct=1.0, resize=mode, interpolation="bilinear")
    monkeypatch.setattr(imaging, "MAX_RESIZED_PIXELS", 30 * 10)
    x, picture = preprocess(img, p)
    resized = np.asarray(img.resize((30, 10), Image.BILINEAR))
    want = resized[:, 10:20] if mode == "center_crop" else resized
    assert np.array_equal(picture, want)
    monkeypatch.setattr(imaging, "MAX_RESIZED_PIXELS", 30 * 10 - 1)
    with pytest.raises(ConfigError):
        preprocess(img, p)


def test_the_explain_path_is_limited_too(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_RESIZED_PIXELS", 1000)
    with pytest.raises(ConfigError, match="model.preprocess.resize"):
        explain(TinyCNN().eval(), Image.new("RGB", (2, 400)), "gradcam", layer="features.2", target=0,
                preprocess_config=pre(input_size=16, resize="keep_aspect"))


# --- point 14: messages that help -----------------------------------------------------------


def test_a_folder_given_as_the_file_path_says_it_is_a_folder(tmp_path):
    with pytest.raises(ConfigError) as e:
        sources_from_config("file", image_cfg(source="file", path=str(tmp_path)))
    msg = str(e.value)
    assert msg.startswith("image.file.path") and str(tmp_path) in msg
    assert "is a folder" in msg and "does not exist" not in msg
    assert f"image=folder image.folder.path={tmp_path}" in msg


def test_read_image_of_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_image(tmp_path, key="image")
    assert "is a folder" in str(e.value) and "does not exist" not in str(e.value)


def test_a_file_given_as_the_folder_path_says_it_is_a_file(tmp_path):
    f = tmp_path / "cat.png"
    Image.new("RGB", (4, 4)).save(f)
    with pytest.raises(ConfigError) as e:
        sources_from_config("folder", image_cfg(source="folder", path=str(f)))
    msg = str(e.value)
    assert msg.startswith("image.folder.path") and str(f) in msg
    assert "is a file" in msg and "does not exist" not in msg
    assert f"image=file image.file.path={f}" in msg


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_missing_path_still_does_not_exist(tmp_path, kind):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="does not exist"):
        sources_from_config(kind, image_cfg(source=kind, path=str(missing)))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    c = tmp_path / "cache"
    monkeypatch.setenv("CNNVIZ_HOME", str(c))
    (c / "images").mkdir(parents=True)
    return c


def offline(monkeypatch) -> list:
    calls = []

    def urlopen(url, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(imaging.urllib.request, "urlopen", urlopen)
    return calls


def png_bytes(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(upright_picture(8, 8, seed)).save(buf, "PNG")
    return buf.getvalue()


def test_cached_preset_with_wrong_content_is_moved_aside_and_the_message_says_so(cache, monkeypatch):
    calls = offline(monkeypatch)
    good, bad = png_bytes(0), png_bytes(1)
    expected, actual = hashlib.sha256(good).hexdigest(), hashlib.sha256(bad).hexdigest()
    target = cache / "images" / "snake.png"
    target.write_bytes(bad)
    with pytest.raises(ConfigError) as e:
        fetch_preset("snake", "https://example.invalid/snake.png", expected, key="image.snake")
    msg = str(e.value)
    aside = cache / "images" / f"snake.png.bad-{actual[:8]}"
    assert aside.read_bytes() == bad  # kept, never deleted
    assert not target.exists()
    assert msg.startswith("image.snake")
    assert "did not match its sha256" in msg and expected in msg and actual in msg
    assert str(aside) in msg and "moved aside" in msg
    assert "not cached and could not be downloaded" in msg and f"Place the file at {target}" in msg
    assert calls == ["https://example.invalid/snake.png"]


def test_moved_aside_then_downloaded_keeps_both(cache, monkeypatch, caplog):
    good, bad = png_bytes(0), png_bytes(1)
    target = cache / "images" / "snake.png"
    target.write_bytes(bad)

    class Response:
        def read(self):
            return good

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(imaging.urllib.request, "urlopen", lambda *a, **k: Response())
    with caplog.at_level(logging.WARNING, logger="cnnviz"):
        path = fetch_preset("snake", "https://example.invalid/snake.png", hashlib.sha256(good).hexdigest())
    assert path == target and target.read_bytes() == good
    assert (cache / "images" / f"snake.png.bad-{hashlib.sha256(bad).hexdigest()[:8]}").read_bytes() == bad
    assert any("did not match its sha256" in r.getMessage() for r in caplog.records)


def test_hidden_files_in_a_folder_are_skipped(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.jpg")
    (tmp_path / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    Image.new("RGB", (4, 4)).save(tmp_path / ".thumbnail.png")  # readable, but hidden all the same
    sources = sources_from_config("folder", image_cfg(source="folder", path=str(tmp_path)))
    assert [Path(s.origin).name for s in sources] == ["photo.jpg"]


def test_a_folder_of_only_hidden_images_holds_no_images(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / ".a.png")
    with pytest.raises(ConfigError, match="holds no images"):
        sources_from_config("folder", image_cfg(source="folder", path=str(tmp_path)))


def frames(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (6, 4), (40 * i + 10, 200 - 40 * i, 7)) for i in range(n)]


@pytest.mark.parametrize("fmt,suffix,kw", [
    ("GIF", ".gif", {"duration": 100, "loop": 0}),
    ("TIFF", ".tif", {}),
    ("PNG", ".png", {"duration": 100}),  # APNG
    ("WEBP", ".webp", {"lossless": True, "duration": 100}),
], ids=["gif", "tiff", "apng", "webp"])
def test_multi_frame_images_use_the_first_frame_and_say_so(tmp_path, caplog, fmt, suffix, kw):
    f = tmp_path / f"anim{suffix}"
    first, *rest = frames(3)
    first.save(f, fmt, save_all=True, append_images=rest, **kw)
    assert Image.open(f).n_frames == 3
    with caplog.at_level(logging.WARNING, logger="cnnviz"):
        img, _ = read_image(f)
    assert np.array_equal(np.asarray(img), np.asarray(first))
    (note,) = img.info["cnnviz_warnings"]
    assert "3 frames" in note and "first" in note and str(f) in note
    assert any(r.name == "cnnviz" and "3 frames" in r.getMessage() for r in caplog.records)
    # the in-process cache hands out copies: the note survives, and a caller's edit does not leak
    img.info["cnnviz_warnings"].append("added by a caller")
    again, _ = read_image(f)
    assert again.info["cnnviz_warnings"] == [note]


def test_a_single_frame_image_carries_no_note(tmp_path):
    Image.new("RGB", (6, 4)).save(tmp_path / "one.gif")
    img, _ = read_image(tmp_path / "one.gif")
    assert "cnnviz_warnings" not in img.info


# --- end to end: run.py on a folder as a phone and a Mac leave it ------------------------------


@pytest.mark.slow
def test_run_py_on_a_folder_of_phone_photos(tmp_path, image_cache):
    """One run over a folder with an EXIF-6 JPEG, its upright copy, an animated GIF and macOS's
    ``._`` file: the tagged photo gets the map of its upright copy, the GIF's rows say that only
    the first frame was used, and the hidden file is not an image of the run."""
    import pandas as pd

    from conftest import run_cli

    folder = tmp_path / "phone"
    folder.mkdir()
    tagged, upright = jpeg_pair(tmp_path, 6)
    (folder / "portrait.jpg").write_bytes(tagged.read_bytes())
    Image.fromarray(upright).save(folder / "portrait_upright.png")
    first, *rest = frames(3)
    first.save(folder / "anim.gif", save_all=True, append_images=rest, duration=100, loop=0)
    (folder / "._portrait.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    run = tmp_path / "run"
    proc = run_cli(["image=folder", f"image.folder.path={folder}", "method=gradcam"], run, image_cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(run / "manifest.csv").set_index("image")
    assert sorted(df.index) == ["anim", "portrait", "portrait_upright"]
    assert (df.status == "ok").all()
    assert df.loc["portrait", "image_sha256"] == hashlib.sha256(tagged.read_bytes()).hexdigest()
    assert df.loc["portrait", "predicted"] == df.loc["portrait_upright", "predicted"]
    assert df.loc["portrait", "target_prob"] == df.loc["portrait_upright", "target_prob"]
    arrays = [c for c in df.columns if c.startswith("file_") and str(df.loc["portrait", c]).endswith(".npy")]
    assert arrays
    for c in arrays:
        a, b = (np.load(run / str(df.loc[name, c])) for name in ("portrait", "portrait_upright"))
        assert np.array_equal(a, b), c
    assert "3 frames" in str(df.loc["anim", "warnings"]) and "first" in str(df.loc["anim", "warnings"])
    assert "frames" not in str(df.loc["portrait", "warnings"])


def test_the_cache_folder_comes_from_cnnviz_home_and_the_former_variable(monkeypatch, tmp_path):
    from cnnviz.data.images import cache_dir

    monkeypatch.delenv("CNNVIZ_HOME", raising=False)
    monkeypatch.setenv("CNNVIZ_CACHE", str(tmp_path / "old"))
    assert cache_dir() == tmp_path / "old"
    monkeypatch.setenv("CNNVIZ_HOME", str(tmp_path / "new"))
    assert cache_dir() == tmp_path / "new"
