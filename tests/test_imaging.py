"""cnnviz.data.images: reading any Pillow mode as RGB, refusing bad files, the preset cache, image
sources from config, and preprocessing into model inputs."""
from __future__ import annotations

import contextlib
import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageFile

from cnnviz.data import images as imaging
from cnnviz.app.schema import ImageConfig, PreprocessConfig
from cnnviz.core.errors import ConfigError
from cnnviz.data.images import (
    ImageSource,
    fetch_preset,
    preprocess,
    read_image,
    safe_name,
    sources_from_config,
    to_rgb,
    unique_names,
)

from conftest import SHARED_IMAGES, needs_shared_images

CONF = Path(__file__).resolve().parent.parent / "conf"


def rgb(path: Path) -> np.ndarray:
    img, _ = read_image(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def noise_image(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


# --- modes -----------------------------------------------------------------------------------


def test_rgba_alpha_is_composited_on_white(tmp_path):
    a = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 0, 0, 128], [10, 20, 30, 0]]], dtype=np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "x.png")
    out = rgb(tmp_path / "x.png").astype(int)
    assert out.shape == (1, 4, 3)
    assert out[0, 0].tolist() == [255, 0, 0]  # opaque: unchanged
    assert out[0, 1].tolist() == [255, 255, 255]  # fully transparent: white, whatever the colour
    assert out[0, 3].tolist() == [255, 255, 255]
    # half-transparent black over white: 255 * (1 - 128/255) = 127
    assert np.all(np.abs(out[0, 2] - 127) <= 1)


def test_to_rgb_on_an_in_memory_rgba_image():
    img = Image.new("RGBA", (3, 2), (0, 0, 0, 0))
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (3, 2)
    assert np.all(np.asarray(out) == 255)


def test_palette_image_keeps_colours_and_transparent_index_becomes_white(tmp_path):
    p = Image.new("P", (3, 1))
    p.putpalette([0, 0, 0, 200, 10, 20, 5, 250, 7] + [0] * (256 * 3 - 9))
    p.putdata([0, 1, 2])
    p.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = rgb(tmp_path / "p.png")
    assert out[0].tolist() == [[255, 255, 255], [200, 10, 20], [5, 250, 7]]


def test_palette_image_without_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([1, 2, 3, 90, 80, 70] + [0] * (256 * 3 - 6))
    p.putdata([0, 1])
    p.save(tmp_path / "p.gif")
    out = rgb(tmp_path / "p.gif")
    assert out[0].tolist() == [[1, 2, 3], [90, 80, 70]]


def test_grayscale_l_is_replicated_to_three_channels(tmp_path):
    a = np.array([[0, 77, 255]], dtype=np.uint8)
    Image.fromarray(a, "L").save(tmp_path / "g.png")
    out = rgb(tmp_path / "g.png")
    assert out.shape == (1, 3, 3)
    for c in range(3):
        assert out[0, :, c].tolist() == [0, 77, 255]


def test_la_alpha_is_composited_on_white(tmp_path):
    img = Image.new("LA", (2, 1))
    img.putdata([(40, 255), (40, 0)])
    img.save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    out = rgb(tmp_path / "la.png")
    assert out[0].tolist() == [[40, 40, 40], [255, 255, 255]]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_comes_back_rgb(tmp_path, suffix):
    img = Image.new("CMYK", (48, 16), (0, 0, 0, 0))  # white
    img.paste((255, 0, 0, 0), (16, 0, 32, 16))  # cyan
    img.paste((0, 0, 0, 255), (32, 0, 48, 16))  # black
    img.save(tmp_path / f"c{suffix}")
    assert Image.open(tmp_path / f"c{suffix}").mode == "CMYK"
    out = rgb(tmp_path / f"c{suffix}").astype(int)
    assert out.shape == (16, 48, 3)
    tol = 12  # JPEG is lossy
    assert np.all(np.abs(out[8, 8] - [255, 255, 255]) <= tol)
    assert np.all(np.abs(out[8, 24] - [0, 255, 255]) <= tol)
    assert np.all(np.abs(out[8, 40] - [0, 0, 0]) <= tol)


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[65535, 32768, 0, 4096]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = rgb(tmp_path / "g16.png").astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert np.all(np.abs(out[0, 1] - 128) <= 1)  # half of full scale, not clipped to 255
    assert out[0, 2].tolist() == [0, 0, 0]
    assert np.all(np.abs(out[0, 3] - 4096 / 65535 * 255) <= 1)


def test_16_bit_scaling_does_not_depend_on_other_pixels(tmp_path):
    Image.fromarray(np.array([[200, 255]], dtype=np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[200, 256]], dtype=np.uint16)).save(tmp_path / "b.png")
    a, b = rgb(tmp_path / "a.png"), rgb(tmp_path / "b.png")
    # the same 16-bit value must map to the same 8-bit value: 200/65535 of full scale is about 1
    assert a[0, 0].tolist() == b[0, 0].tolist()
    assert a[0, 0, 0] <= 1


def test_grayscale_png_with_transparent_colour_becomes_white(tmp_path):
    Image.fromarray(np.array([[0, 100]], dtype=np.uint8), "L").save(tmp_path / "t.png", transparency=0)
    out = rgb(tmp_path / "t.png")
    assert out[0, 1].tolist() == [100, 100, 100]
    assert out[0, 0].tolist() == [255, 255, 255]  # as a transparent palette index is


def test_read_image_returns_the_file_sha256(tmp_path):
    noise_image().save(tmp_path / "n.png")
    img, sha = read_image(tmp_path / "n.png")
    assert sha == hashlib.sha256((tmp_path / "n.png").read_bytes()).hexdigest()
    assert img.size == (64, 48)
    assert np.array_equal(np.asarray(img), np.asarray(noise_image()))


# --- unreadable files ------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ConfigError) as e:
        read_image(missing, key="image.file")
    msg = str(e.value)
    assert str(missing) in msg and "does not exist" in msg
    assert msg.startswith("image.file")


def test_a_folder_is_not_an_image_file(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not an image file"):
        read_image(tmp_path / "d.png")


def test_text_named_png_is_refused(tmp_path):
    f = tmp_path / "notes.png"
    f.write_text("this is not an image\n" * 10)
    with pytest.raises(ConfigError) as e:
        read_image(f)
    assert str(f) in str(e.value)
    assert "not a readable image" in str(e.value)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_file_is_refused(tmp_path, fmt, suffix, monkeypatch):
    whole = tmp_path / f"whole{suffix}"
    noise_image(128, 96).save(whole, fmt)
    read_image(whole)  # the complete file is fine
    cut = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    # even when someone else in the process allowed truncated images
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigError) as e:
        read_image(cut)
    assert str(cut) in str(e.value)
    assert "truncated" in str(e.value)


@pytest.mark.parametrize("side", [30, 12], ids=["over-2x-limit-error", "1x-2x-limit-warning"])
def test_decompression_bomb_is_refused_with_the_limit(tmp_path, monkeypatch, side):
    f = tmp_path / "bomb.png"
    Image.new("RGB", (side, side), (1, 2, 3)).save(f)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    # between one and two times the limit Pillow only warns (and the image is refused all the same)
    warns = pytest.warns(Image.DecompressionBombWarning) if side * side <= 200 else contextlib.nullcontext()
    with pytest.raises(ConfigError) as e, warns:
        read_image(f)
    msg = str(e.value)
    assert str(f) in msg
    assert "100" in msg and "limit" in msg


def test_image_under_the_bomb_limit_reads(tmp_path, monkeypatch):
    f = tmp_path / "small.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(f)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert rgb(f)[0, 0].tolist() == [1, 2, 3]


# --- safe names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "/abs/path", "a\\b\\..\\c", ".hidden", "x" * 500, ""])
def test_safe_name_cannot_leave_a_folder(name, tmp_path):
    s = safe_name(name)
    assert s and "/" not in s and "\\" not in s
    assert not s.startswith(".")
    assert len(s) <= 120
    assert (tmp_path / s).resolve().parent == tmp_path.resolve()


def test_safe_name_keeps_plain_names():
    assert safe_name("cat_dog") == "cat_dog"
    assert safe_name("img-01.v2") == "img-01.v2"


# --- preset cache ----------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, data: bytes):
        self.data = data

    def read(self):
        return self.data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty private cache (the shared seeded one must not be modified)."""
    c = tmp_path / "cache"
    monkeypatch.setenv("CNNVIZ_HOME", str(c))
    return c


@pytest.fixture
def offline(monkeypatch) -> list:
    calls = []

    def urlopen(url, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(imaging.urllib.request, "urlopen", urlopen)
    return calls


def png_bytes(seed: int = 0) -> bytes:
    import io

    buf = io.BytesIO()
    noise_image(seed=seed).save(buf, "PNG")
    return buf.getvalue()


def test_cached_preset_with_right_sha256_needs_no_network(cache, offline):
    data = png_bytes()
    (cache / "images").mkdir(parents=True)
    (cache / "images" / "thing.png").write_bytes(data)
    path = fetch_preset("thing", "https://example.invalid/thing.png", hashlib.sha256(data).hexdigest())
    assert path == cache / "images" / "thing.png"
    assert path.read_bytes() == data
    assert offline == []


def test_cached_preset_with_wrong_sha256_is_removed_and_offline_error_says_where(cache, offline):
    good, bad = png_bytes(0), png_bytes(1)
    sha = hashlib.sha256(good).hexdigest()
    target = cache / "images" / "thing.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(bad)
    with pytest.raises(ConfigError) as e:
        fetch_preset("thing", "https://example.invalid/thing.png", sha, key="image.thing")
    msg = str(e.value)
    assert not target.exists()
    assert str(target) in msg and sha in msg
    assert msg.startswith("image.thing")
    assert offline == ["https://example.invalid/thing.png"]


def test_not_cached_and_offline_names_the_path(cache, offline):
    with pytest.raises(ConfigError) as e:
        fetch_preset("thing", "https://example.invalid/thing.png", "0" * 64)
    assert str(cache / "images" / "thing.png") in str(e.value)
    assert "https://example.invalid/thing.png" in str(e.value)


def test_download_with_wrong_sha256_is_refused_and_not_kept(cache, monkeypatch):
    expected = hashlib.sha256(png_bytes(0)).hexdigest()
    monkeypatch.setattr(imaging.urllib.request, "urlopen", lambda *a, **k: FakeResponse(png_bytes(1)))
    with pytest.raises(ConfigError) as e:
        fetch_preset("thing", "https://example.invalid/thing.png", expected)
    assert expected in str(e.value)
    assert hashlib.sha256(png_bytes(1)).hexdigest() in str(e.value)
    folder = cache / "images"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_with_right_sha256_is_kept(cache, monkeypatch):
    data = png_bytes(2)
    monkeypatch.setattr(imaging.urllib.request, "urlopen", lambda *a, **k: FakeResponse(data))
    path = fetch_preset("thing", "https://example.invalid/thing.png", hashlib.sha256(data).hexdigest())
    assert path == cache / "images" / "thing.png"
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["thing.png"]  # no .part left behind


def test_preset_name_cannot_escape_the_cache(cache, offline):
    with pytest.raises(ConfigError) as e:
        fetch_preset("../../evil", "https://example.invalid/x.png", "0" * 64)
    where = Path(str(e.value).split("Place the file at ")[1].split(" (sha256")[0])
    assert where.parent == cache / "images"


# --- sources from config ---------------------------------------------------------------------


def image_cfg(**kw):
    return OmegaConf.structured(ImageConfig(**kw))


def test_folder_lists_sorted_images_and_ignores_the_rest(tmp_path):
    for name in ["b.png", "a.jpg", "c.bmp"]:
        noise_image().save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub.png").mkdir()  # a folder, whatever its name
    sources = sources_from_config("folder", image_cfg(source="folder", path=str(tmp_path), target=3))
    assert [s.name for s in sources] == ["a", "b", "c"]
    assert [Path(s.origin).name for s in sources] == ["a.jpg", "b.png", "c.bmp"]
    assert all(s.default_target == 3 for s in sources)
    img, sha = sources[1].read()  # each source reads its own file
    assert sha == hashlib.sha256((tmp_path / "b.png").read_bytes()).hexdigest()
    assert img.mode == "RGB"


def test_empty_folder_is_a_config_error(tmp_path):
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(ConfigError) as e:
        sources_from_config("folder", image_cfg(source="folder", path=str(tmp_path)))
    assert "image.folder.path" in str(e.value) and str(tmp_path) in str(e.value)


@pytest.mark.parametrize("path", [None, "/definitely/not/here"])
def test_folder_without_a_valid_path(path):
    with pytest.raises(ConfigError, match=r"image\.folder\.path"):
        sources_from_config("folder", image_cfg(source="folder", path=path))


@pytest.mark.parametrize("path", [None, "/definitely/not/here.png"])
def test_file_with_missing_path_names_the_key(path):
    with pytest.raises(ConfigError) as e:
        sources_from_config("file", image_cfg(source="file", path=path))
    assert "image.file.path" in str(e.value)
    if path:
        assert path in str(e.value)


def test_file_source_is_read_eagerly_and_named_after_the_stem(tmp_path):
    noise_image().save(tmp_path / "my photo.png")
    (src,) = sources_from_config("file", image_cfg(source="file", path=str(tmp_path / "my photo.png"), target=7))
    assert src.eager is True
    assert src.default_target == 7
    assert src.name == safe_name("my photo") and "/" not in src.name
    assert src.read()[0].size == (64, 48)


def test_unknown_skimage_name_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        sources_from_config("mystery", image_cfg(source="skimage", name="not_an_image_xyz"))
    assert "image.mystery.name" in str(e.value) and "not_an_image_xyz" in str(e.value)


def test_skimage_source_reads_offline():
    (src,) = sources_from_config("coffee", image_cfg(source="skimage", name="coffee"))
    img, sha = src.read()
    assert src.name == "coffee" and src.default_target is None
    assert img.mode == "RGB" and img.size == (600, 400)
    assert len(sha) == 64


def test_unknown_source_kind_is_a_config_error():
    with pytest.raises(ConfigError, match=r"image\.x\.source"):
        sources_from_config("x", image_cfg(source="web"))


def test_preset_without_sha256_is_a_config_error():
    with pytest.raises(ConfigError, match="sha256"):
        sources_from_config("x", image_cfg(source="preset", url="https://example.invalid/x.png"))


@needs_shared_images
def test_shared_preset_is_served_from_the_seeded_cache(image_cache, offline):
    cfg = OmegaConf.merge(OmegaConf.structured(ImageConfig), OmegaConf.load(CONF / "image" / "snake.yaml"))
    (src,) = sources_from_config("snake", cfg)
    img, sha = src.read()
    assert offline == []
    assert sha == cfg.sha256 == hashlib.sha256((SHARED_IMAGES / "snake.png").read_bytes()).hexdigest()
    assert src.default_target == cfg.target and img.mode == "RGB"


# --- unique names ----------------------------------------------------------------------------


def src(name: str, target=None) -> ImageSource:
    return ImageSource(name, lambda: (Image.new("RGB", (1, 1)), ""), target, origin=f"/{name}")


def test_unique_names_renames_duplicates_and_keeps_the_rest():
    given = [src("cat", 1), src("cat", 2), src("dog"), src("cat", 3)]
    out = unique_names(given)
    assert [s.name for s in out] == ["cat", "cat_2", "dog", "cat_3"]
    assert [s.default_target for s in out] == [1, 2, None, 3]
    assert [s.read for s in out] == [s.read for s in given]
    assert [s.name for s in given] == ["cat", "cat", "dog", "cat"]  # inputs untouched


def test_unique_names_never_collides_with_an_existing_name():
    out = unique_names([src("cat"), src("cat_2"), src("cat")])
    names = [s.name for s in out]
    assert len(set(names)) == len(names), names


# --- preprocessing ---------------------------------------------------------------------------


def pre(**kw):
    return OmegaConf.structured(PreprocessConfig(**{"mean": [0.5] * 3, "std": [0.5] * 3, **kw}))


def bands(w: int, h: int, cuts: tuple[int, int]) -> Image.Image:
    """Red left of cuts[0], green between, blue from cuts[1] on."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : cuts[0]] = (255, 0, 0)
    a[:, cuts[0] : cuts[1]] = (0, 255, 0)
    a[:, cuts[1] :] = (0, 0, 255)
    return Image.fromarray(a, "RGB")


def assert_picture_is_the_input(x: torch.Tensor, picture: np.ndarray, mean=0.5, std=0.5):
    assert picture.dtype == np.uint8
    assert x.shape[-2:] == picture.shape[:2] and picture.shape[2] == 3
    back = (x[0].permute(1, 2, 0) * std + mean) * 255.0
    assert torch.allclose(back, torch.from_numpy(picture).float(), atol=1e-3)


def test_center_crop_is_224_and_centred():
    # 300x200: shorter side to 224/0.875 = 256 (scale 1.28), crop keeps x in [62.5, 237.5) of the original
    img = bands(300, 200, (100, 200))
    x, picture = preprocess(img, pre(resize="center_crop", crop_pct=0.875))
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert picture.shape == (224, 224, 3)
    assert_picture_is_the_input(x, picture)
    row = picture[112].astype(int)
    red = np.sum((row[:, 0] > 200) & (row[:, 1] < 50))
    blue = np.sum((row[:, 2] > 200) & (row[:, 1] < 50))
    assert abs(red - 48) <= 2 and abs(blue - 48) <= 2  # (100 - 62.5) * 1.28 = 48 columns each side
    assert np.all(picture[:, 112, 1] == 255)


def test_stretch_gives_a_square_of_the_whole_image():
    img = bands(300, 100, (150, 150))  # left half red, right half blue
    x, picture = preprocess(img, pre(resize="stretch"))
    assert x.shape == (1, 3, 224, 224) and picture.shape == (224, 224, 3)
    assert_picture_is_the_input(x, picture)
    assert picture[0, 0].tolist() == [255, 0, 0] and picture[-1, -1].tolist() == [0, 0, 255]
    assert picture[5, 100].tolist() == [255, 0, 0] and picture[5, 124].tolist() == [0, 0, 255]


def test_keep_aspect_scales_the_shorter_side_and_does_not_crop():
    img = bands(300, 150, (150, 150))
    x, picture = preprocess(img, pre(resize="keep_aspect"))
    assert x.shape == (1, 3, 224, 448)
    assert picture.shape == (224, 448, 3)
    assert_picture_is_the_input(x, picture)
    assert picture[0, 0].tolist() == [255, 0, 0] and picture[-1, -1].tolist() == [0, 0, 255]
    assert picture[100, 220].tolist() == [255, 0, 0] and picture[100, 228].tolist() == [0, 0, 255]


def test_normalisation_with_half_mean_and_std_maps_to_minus_one_and_one():
    black = preprocess(Image.new("RGB", (50, 40), 0), pre())[0]
    white = preprocess(Image.new("RGB", (50, 40), (255, 255, 255)), pre())[0]
    assert torch.allclose(black, torch.full_like(black, -1.0))
    assert torch.allclose(white, torch.full_like(white, 1.0))


def test_normalisation_is_per_channel():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x, _ = preprocess(Image.new("RGB", (30, 30), (255, 0, 51)), pre(mean=mean, std=std, resize="stretch"))
    expected = [(1 - mean[0]) / std[0], (0 - mean[1]) / std[1], (0.2 - mean[2]) / std[2]]
    for c in range(3):
        assert torch.allclose(x[0, c], torch.full((224, 224), expected[c]), atol=1e-5)


def test_unknown_resize_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.preprocess\.resize"):
        preprocess(noise_image(), pre(resize="squash"))


def test_unknown_interpolation_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.preprocess\.interpolation"):
        preprocess(noise_image(), pre(interpolation="bicubc"))
