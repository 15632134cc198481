"""The ground-truth benchmark's images (cnnviz.benchmark.data) and its small CNN (cnnviz.benchmark.model):
a deterministic generator whose masks are exactly the planted object's pixels, distractors that share
the evidence's colours, and a trained checkpoint cached with its sha256 and rebuilt when it does not match."""
from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz.benchmark import data
from cnnviz.benchmark.data import CLASSES, PALETTE, compose, draw, make_dataset, make_sample


# --- the generator -----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_images_and_another_seed_other_images():
    a = make_dataset(12, seed=3, size=64)
    b = make_dataset(12, seed=3, size=64)
    c = make_dataset(12, seed=4, size=64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[2], c[2])
    images, labels, masks = a
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (12,) and masks.shape == (12, 64, 64) and masks.dtype == bool


def test_an_image_does_not_depend_on_how_many_are_made():
    # each image has its own random stream: a held-out set of 20 starts with the images of a set of 5
    small, large = make_dataset(5, seed=1, size=48), make_dataset(20, seed=1, size=48)
    np.testing.assert_array_equal(small[0], large[0][:5])
    np.testing.assert_array_equal(small[2], large[2][:5])


def test_every_class_appears_and_the_classes_are_shapes():
    assert len(CLASSES) >= 4
    _, labels, _ = make_dataset(40, seed=0, size=64)
    assert set(labels.tolist()) == set(range(len(CLASSES)))


@pytest.mark.parametrize("index", range(12))
def test_the_mask_is_exactly_the_planted_objects_pixels(index):
    sample = make_sample(seed=7, index=index, size=64)
    obj = sample.scene.object
    # the object drawn alone into a blank canvas covers the mask's pixels and no other
    blank = np.zeros((64, 64, 3), np.uint8)
    drawn = draw(obj.kind, 64, obj.cy, obj.cx, obj.radius, obj.angle)
    blank[drawn] = obj.colour
    np.testing.assert_array_equal(sample.mask, blank.any(-1))
    assert obj.kind == CLASSES[sample.label]
    # in the image, the mask's pixels are the object's colour, and the scene without the object differs
    # from the image only inside the mask
    assert (sample.image[sample.mask] == np.array(obj.colour, np.uint8)).all()
    without = compose(sample.scene, with_object=False)
    changed = (without != sample.image).any(-1)
    assert changed.any() and not (changed & ~sample.mask).any()
    assert 20 < sample.mask.sum() < 0.4 * 64 * 64
    # no distractor lies under the object: the evidence is whole, and nothing else is under it
    for d in sample.scene.distractors:
        assert not (draw(d.kind, 64, d.cy, d.cx, d.radius, d.angle) & sample.mask).any()


def test_the_object_lies_inside_the_image_at_varied_places_and_scales():
    samples = [make_sample(seed=2, index=i, size=64) for i in range(40)]
    for s in samples:
        assert not (s.mask[0].any() or s.mask[-1].any() or s.mask[:, 0].any() or s.mask[:, -1].any())
    centres = np.array([(s.scene.object.cy, s.scene.object.cx) for s in samples])
    radii = np.array([s.scene.object.radius for s in samples])
    assert centres.std(axis=0).min() > 6 and radii.max() / radii.min() > 1.4


def test_distractors_share_the_evidence_colour():
    images, labels, masks = make_dataset(40, seed=5, size=64)
    palette = np.array(PALETTE, np.uint8)
    inside, outside = np.zeros(len(PALETTE)), np.zeros(len(PALETTE))
    for image, mask in zip(images, masks):
        hits = (image[:, :, None, :] == palette[None, None]).all(-1)  # (H, W, colours)
        colour = hits[mask].sum(0).argmax()
        # in each image, pixels of the object's own colour also lie outside the object (a distractor)
        assert hits[~mask][:, colour].sum() >= 10
        inside += hits[mask].sum(0)
        outside += hits[~mask].sum(0)
    # over the set, the colour histograms of evidence and distractors overlap: every palette colour is in both
    assert (inside > 0).all() and (outside > 0).all()
    p, q = inside / inside.sum(), outside / outside.sum()
    assert np.minimum(p, q).sum() > 0.6


def test_backgrounds_vary_and_are_not_flat():
    images, _, masks = make_dataset(8, seed=0, size=64)
    stds = [img[~m].std() for img, m in zip(images, masks)]
    assert min(stds) > 5
    assert len({img[:8, :8].tobytes() for img in images}) == 8


def test_a_held_out_set_is_saved_as_pngs_masks_and_a_list(tmp_path):
    images, labels, masks = make_dataset(6, seed=11, size=64)
    listed = data.save_split(tmp_path / "held", images, labels, masks)
    with open(listed, newline="") as f:
        rows = list(csv.DictReader(f))
    from cnnviz.data.lists import LIST_COLUMNS

    assert len(rows) == 6 and set(rows[0]) <= set(LIST_COLUMNS)  # usable by image=list today
    for row, image, label, mask in zip(rows, images, labels, masks):
        np.testing.assert_array_equal(np.asarray(Image.open(listed.parent / row["path"])), image)
        assert int(row["target"]) == label
        saved = np.asarray(Image.open(listed.parent / "masks" / f"{row['name']}.png")) > 0
        np.testing.assert_array_equal(saved, mask)
        x0, y0, x1, y1 = (float(v) for v in row["box"].split(","))
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    with_masks = data.save_split(tmp_path / "held2", images, labels, masks, mask_column=True)
    with open(with_masks, newline="") as f:
        assert next(csv.DictReader(f))["mask"] == "masks/" + rows[0]["name"] + ".png"


def test_the_list_runs_through_the_list_reader(tmp_path):
    from omegaconf import OmegaConf

    from cnnviz.data.lists import list_sources

    images, labels, masks = make_dataset(4, seed=0, size=64)
    listed = data.save_split(tmp_path / "held", images, labels, masks)
    sources = list_sources("image.list", OmegaConf.create({"path": str(listed), "limit": None, "shuffle": False,
                                                           "seed": 0}))
    assert [s.default_target for s in sources] == labels.tolist()
    assert all(s.box is not None for s in sources)


# --- the model and its cache ---------------------------------------------------------------------


def test_the_network_is_conv_blocks_with_batchnorm_then_gap_and_a_linear_head():
    from cnnviz.benchmark.model import DEFAULT_LAYER, BenchmarkCNN

    net = BenchmarkCNN(len(CLASSES))
    names = dict(net.named_modules())
    assert DEFAULT_LAYER in names
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    out = net(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, len(CLASSES))
    # the default layer is the last conv block: its output (C, h, w) feeds GAP and the head directly
    seen = {}
    h = names[DEFAULT_LAYER].register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    try:
        net.eval()(torch.zeros(1, 3, 64, 64))
    finally:
        h.remove()
    assert seen["o"].dim() == 4 and seen["o"].shape[1] == net.head.in_features


def test_the_cache_rebuilds_a_missing_or_mismatching_checkpoint(tmp_path):
    from cnnviz.benchmark.model import cached_checkpoint

    calls = []

    def build():  # a tiny stand-in for training
        calls.append(1)
        return {"w": torch.arange(4.0) + len(calls)}

    path = tmp_path / "m.pt"
    first, sha1 = cached_checkpoint(path, build, "stand-in")
    assert len(calls) == 1 and first == path and path.is_file()
    assert (tmp_path / "m.pt.sha256").read_text().split()[0] == sha1
    _, again = cached_checkpoint(path, build, "stand-in")
    assert len(calls) == 1 and again == sha1  # reused
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")  # damaged on disk: the sha256 no longer matches
    _, sha2 = cached_checkpoint(path, build, "stand-in")
    assert len(calls) == 2 and sha2 != sha1
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4.0) + 2)
    path.unlink()  # missing
    cached_checkpoint(path, build, "stand-in")
    assert len(calls) == 3
    (tmp_path / "m.pt.sha256").unlink()  # no recorded sha256: not trusted, rebuilt
    cached_checkpoint(path, build, "stand-in")
    assert len(calls) == 4


def test_the_same_weights_give_the_same_sha256_wherever_they_are_cached(tmp_path):
    from cnnviz.benchmark.model import cached_checkpoint

    state = {"w": torch.arange(6.0).view(2, 3)}
    _, a = cached_checkpoint(tmp_path / "a" / "one.pt", lambda: state, "stand-in")
    _, b = cached_checkpoint(tmp_path / "b" / "other-name.pt", lambda: state, "stand-in")
    assert a == b


@pytest.mark.slow
def test_a_short_training_run_beats_chance_and_shuffled_labels_do_not_generalise():
    from cnnviz.benchmark.model import Recipe, accuracy, shuffled_labels, train

    recipe = Recipe(n_train=800, n_test=240, size=48, epochs=5, width=12)
    images, labels, _ = make_dataset(recipe.n_train, seed=recipe.seed, size=recipe.size)
    test_images, test_labels, _ = make_dataset(recipe.n_test, seed=recipe.seed + 1, size=recipe.size)
    chance = 1.0 / len(CLASSES)
    acc = accuracy(train(images, labels, recipe, progress=False), test_images, test_labels)
    assert acc > chance + 0.2, acc
    shuffled = shuffled_labels(labels, recipe.seed)
    assert sorted(shuffled.tolist()) == sorted(labels.tolist()) and (shuffled != labels).mean() > 0.6
    # the same images with the class link cut: whatever it memorises says nothing about held-out images
    acc_shuffled = accuracy(train(images, shuffled, recipe, progress=False), test_images, test_labels)
    assert acc_shuffled < chance + 0.12, acc_shuffled


def test_training_is_seeded_and_leaves_the_thread_count_alone():
    from cnnviz.benchmark.model import Recipe, train

    recipe = Recipe(n_train=64, size=32, epochs=1, batch_size=16, width=4)
    images, labels, _ = make_dataset(recipe.n_train, seed=0, size=recipe.size)
    before = torch.get_num_threads()
    first = train(images, labels, recipe, progress=False, threads=1)
    assert torch.get_num_threads() == before
    second = train(images, labels, recipe, progress=False, threads=1)
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    other = train(images, labels, dataclasses.replace(recipe, seed=1), progress=False, threads=1)
    assert not torch.equal(first.block1[0].weight, other.block1[0].weight)


# --- model=benchmark_cnn ----------------------------------------------------------------------------


def _seed_cache(home, weights: str) -> str:
    """A checkpoint of the default recipe where the loader looks for it (random weights: the loader's
    cache path is under test here, not training), with its sha256 record; returns the sha256."""
    from cnnviz.benchmark.model import BenchmarkCNN, Recipe, cached_checkpoint, checkpoint_path

    torch.manual_seed(0)
    state = BenchmarkCNN(len(CLASSES), Recipe().width).state_dict()
    return cached_checkpoint(checkpoint_path(weights, root=home), lambda: state, "test")[1]


def test_the_loader_reads_the_cached_checkpoint_without_training(tmp_path, monkeypatch):
    from cnnviz.benchmark import model as bm
    from cnnviz.core.errors import ConfigError
    from cnnviz.models.registry import get_loader

    monkeypatch.setenv("CNNVIZ_HOME", str(tmp_path))
    digest = _seed_cache(tmp_path, "shuffled")
    monkeypatch.setattr(bm, "train", lambda *a, **k: pytest.fail("the cached checkpoint should have been used"))
    loader = get_loader("cnnviz.models.benchmark_cnn.benchmark_cnn")
    loaded = loader(weights="shuffled")
    assert loaded.class_names == list(CLASSES) and loaded.weights_sha256 == digest
    assert not loaded.module.training
    random = loader(weights=None, seed=3)
    assert random.weights == "random(seed=3)" and random.weights_sha256 is None
    with pytest.raises(ConfigError, match="model.weights"):
        loader(weights="imagenet")


@pytest.mark.slow
def test_run_py_explains_the_benchmark_cnn_on_a_saved_held_out_list(tmp_path):
    from conftest import ok, run_cli

    cache = tmp_path / "cache"
    _seed_cache(cache, "trained")
    images, labels, masks = make_dataset(4, seed=1, size=64)
    listed = data.save_split(tmp_path / "held", images, labels, masks)
    ok(run_cli(["model=benchmark_cnn", "image=list", f"image.list.path={listed}", "method=gradcam",
                "target=label", "metrics=pointing_game"], tmp_path / "run", cache))
    import pandas as pd

    manifest = pd.read_csv(tmp_path / "run" / "manifest.csv")
    assert len(manifest) == 4 and (manifest["layer"] == "block4").all()
    assert (manifest["status"] == "ok").all(), manifest["error"].tolist()
    assert manifest["target_name"].tolist() == [CLASSES[y] for y in labels]
