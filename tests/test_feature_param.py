"""The building blocks of feature visualisation (issue 26): image parametrizations (pixel / fft,
colour decorrelation, squash), transformation robustness and composable objectives. Exact
identities in float64, analytic values on hand-built models, seeded determinism."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnnviz.core.errors import ConfigError
from cnnviz.methods._objectives import (
    OBJECTIVES, Channel, ClassLogit, DeepDream, Direction, Diversity, L2, Neuron, Probe, Sum, TotalVariation,
    make, parse_objective, probing,
)
from cnnviz.methods._parametrization import (
    IMAGENET_EIGENVALUES, Parametrization, apply_colour, colour_matrix, colour_matrix_inverse,
    imagenet_covariance, normalise, spectrum_scale,
)
from cnnviz.methods._transforms import (
    Jitter, Pad, Rotate, Scale, TransformStack, build_transforms, rotate, standard_transforms,
)
from conftest import hook_count

D = torch.float64
COMBOS = [(k, d, s) for k in ("pixel", "fft") for d in (False, True) for s in ("sigmoid", "clamp")]


def pixels(shape=(2, 3, 8, 10), seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(shape, generator=g, dtype=dtype)  # strictly inside (0, 1)


# --- parametrizations -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,decorrelate,squash", COMBOS)
@pytest.mark.parametrize("width", [10, 9])
def test_image_to_params_to_image_round_trips_exactly(kind, decorrelate, squash, width):
    p = Parametrization(kind=kind, decorrelate=decorrelate, squash=squash)
    img = pixels((2, 3, 8, width))
    if decorrelate and squash == "clamp":
        # with clamp every pixel in [0, 1] is reachable; keep the latent in range by construction
        img = img.clamp(0.05, 0.95)
    params = p.from_image(img)
    assert params.shape == p.shape(2, (8, width))
    back = p.to_image(params, size=(8, width))
    assert back.dtype == D
    assert torch.allclose(back, img, rtol=0, atol=1e-10), float((back - img).abs().max())
    # canonical parameters (those from_image gives) round-trip too
    again = p.from_image(back)
    assert torch.allclose(again, params, rtol=0, atol=1e-10 * float(params.abs().max()))


def test_fft_params_project_onto_canonical_ones():
    """The imaginary parts of the four self-conjugate bins (DC and Nyquist rows and columns) of a real
    image are 0: arbitrary params give an image whose canonical params have them at 0 and describe
    the same image."""
    p = Parametrization(kind="fft", decorrelate=False, squash="clamp")
    g = torch.Generator().manual_seed(1)
    params = torch.randn(p.shape(1, (8, 8)), generator=g, dtype=D) * 1e-3 + p.from_image(torch.full((1, 3, 8, 8), 0.5, dtype=D))
    proj = p.from_image(p.to_image(params))
    redundant = torch.zeros(params.shape, dtype=torch.bool)
    for ky in (0, 4):
        for kx in (0, 4):
            redundant[:, :, ky, kx, 1] = True
    assert torch.allclose(proj[redundant], torch.zeros((), dtype=D), atol=1e-12)
    assert not torch.allclose(params[redundant], torch.zeros((), dtype=D), atol=1e-6)
    # the kx = 0 and kx = W/2 columns pair ky with H − ky, so compare the images they describe
    assert torch.allclose(p.to_image(proj), p.to_image(params), atol=1e-12)


def test_colour_matrix_is_an_exact_invertible_square_root_of_imagenet_covariance():
    m, inv = colour_matrix(), colour_matrix_inverse()
    assert m.dtype == D
    # the columns are the covariance's principal axes, largest first: Mᵀ Σ M is diagonal and decreasing
    projected = m.T @ imagenet_covariance() @ m
    assert torch.allclose(projected, torch.diag(torch.diagonal(projected)), atol=1e-15)
    assert bool((torch.diagonal(projected).diff() < 0).all())
    assert torch.allclose(m @ inv, torch.eye(3, dtype=D), atol=1e-12)
    assert torch.allclose(inv @ m, torch.eye(3, dtype=D), atol=1e-12)
    # M Mᵀ is the covariance up to the one scale that gives M unit spectral norm
    sigma = imagenet_covariance()
    ratio = (sigma / (m @ m.T))
    assert torch.allclose(ratio, ratio[0, 0].expand(3, 3), rtol=1e-10)
    assert math.isclose(float(torch.linalg.matrix_norm(m, ord=2)), 1.0, rel_tol=1e-12)
    # the covariance's eigenvalues are the published ones (to the 4 decimals of the eigenvectors)
    assert torch.allclose(torch.linalg.eigvalsh(sigma).flip(0), torch.tensor(IMAGENET_EIGENVALUES, dtype=D), atol=2e-4)
    # the leading direction (luminance-like, all channels the same sign) keeps gain 1
    x = pixels((2, 3, 5, 5), seed=3) - 0.5
    assert torch.allclose(apply_colour(apply_colour(x, m), inv), x, atol=1e-12)


def test_decorrelate_applies_the_matrix_at_every_pixel():
    p = Parametrization(kind="pixel", decorrelate=True, squash="clamp")
    z = torch.zeros(1, 3, 2, 2, dtype=D)
    z[0, :, 1, 0] = torch.tensor([0.1, -0.2, 0.3], dtype=D)
    out = p.to_image(z + 0)  # clamp keeps in-range values
    expected = (colour_matrix() @ z[0, :, 1, 0]).clamp(0, 1)
    assert torch.allclose(out[0, :, 1, 0], expected, atol=1e-15)
    assert torch.equal(out[0, :, 0, 0], torch.zeros(3, dtype=D))


@pytest.mark.parametrize("kind,decorrelate", [("pixel", False), ("pixel", True), ("fft", False), ("fft", True)])
def test_squash_keeps_pixels_in_range(kind, decorrelate):
    g = torch.Generator().manual_seed(0)
    for squash in ("sigmoid", "clamp"):
        p = Parametrization(kind=kind, decorrelate=decorrelate, squash=squash)
        params = (torch.randn(p.shape(2, 8), generator=g, dtype=D) * 1e3).requires_grad_()
        img = p.to_image(params)
        assert img.min() >= 0 and img.max() <= 1
        assert img.min() < 0.01 and img.max() > 0.99  # large params do reach the ends
    # sigmoid of a finite value never reaches 0 or 1 exactly (float64, moderate params)
    s = Parametrization(kind="pixel", decorrelate=False, squash="sigmoid").to_image(torch.tensor([-30.0, 0.0, 30.0], dtype=D).view(1, 3, 1, 1))
    assert 0 < float(s.min()) and float(s.max()) < 1 and float(s[0, 1]) == 0.5


def test_clamp_has_no_gradient_outside_the_range_and_sigmoid_has_everywhere():
    x = torch.tensor([-0.5, 0.5, 1.5], dtype=D).view(1, 3, 1, 1).requires_grad_()
    Parametrization(kind="pixel", decorrelate=False, squash="clamp").to_image(x).sum().backward()
    assert x.grad.flatten().tolist() == [0.0, 1.0, 0.0]
    x.grad = None
    Parametrization(kind="pixel", decorrelate=False, squash="sigmoid").to_image(x).sum().backward()
    assert bool((x.grad > 0).all())


@pytest.mark.parametrize("decay", [1.0, 0.5, 0.0])
def test_one_fft_coefficient_gives_the_expected_cosine(decay):
    """A real coefficient c at bin (ky, kx), 0 < kx < W/2, is the image
    2·c·s/√(HW) · cos(2π(ky·y/H + kx·x/W)) (its Hermitian twin doubles it; the transform is
    orthonormal), with s = r/max(f, 1/max(H, W))^decay, f = √((ky/H)² + (kx/W)²) in cycles per pixel
    and r the size's constant (the inverse rms of the unnormalised factors over all H·(W/2+1) bins,
    summed here by hand). An imaginary one gives −2·c·s/√(HW) · sin(...)."""
    h, w, ky, kx, c = 8, 12, 2, 3, 0.7
    p = Parametrization(kind="fft", decorrelate=False, squash="clamp", decay=decay)

    def raw(fy, fx):
        return 1 / max(math.hypot(fy, fx), 1 / max(h, w)) ** decay

    bins = [raw(min(i, h - i) / h, j / w) for i in range(h) for j in range(w // 2 + 1)]
    r = 1 / math.sqrt(sum(b * b for b in bins) / len(bins))
    s = r * raw(ky / h, kx / w)
    amplitude = 2 * c * s / math.sqrt(h * w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=D), torch.arange(w, dtype=D), indexing="ij")
    phase = 2 * math.pi * (ky * yy / h + kx * xx / w)
    for part, expected in ((0, amplitude * torch.cos(phase)), (1, -amplitude * torch.sin(phase))):
        params = torch.zeros(p.shape(1, (h, w)), dtype=D)
        params[0, 1, ky, kx, part] = c
        z = p.spatial(params)
        assert torch.allclose(z[0, 1], expected, atol=1e-14)
        assert torch.equal(z[0, 0], torch.zeros(h, w, dtype=D)) and torch.equal(z[0, 2], torch.zeros(h, w, dtype=D))
    assert math.isclose(float(spectrum_scale(h, w, decay)[ky, kx]), s, rel_tol=1e-14)
    # the DC bin is scaled like the lowest frequency, 1/max(H, W): a flat image r·c·max(H,W)^decay/√(HW)
    params = torch.zeros(p.shape(1, (h, w)), dtype=D)
    params[0, 0, 0, 0, 0] = c
    assert torch.allclose(p.spatial(params)[0, 0], torch.full((h, w), r * c * max(h, w) ** decay / math.sqrt(h * w), dtype=D))
    if decay == 0:
        assert r == 1.0  # a flat spectrum needs no normalising


def test_low_frequencies_get_larger_steps_than_high_ones_and_the_spread_does_not_depend_on_size():
    s = spectrum_scale(16, 16, 1.0)
    assert float(s[1, 0] / s[8, 8]) == pytest.approx(16.0 * math.hypot(0.5, 0.5))  # 1/f
    assert float(s[0, 0]) == float(s[0, 1])  # DC floored at the lowest non-zero frequency
    assert float(s.square().mean()) == pytest.approx(1.0)
    # white coefficients of unit variance give a latent image of about unit variance at any size
    # (1.25 to 1.32 from 8 to 224 px: Hermitian pairs count twice, self-conjugate bins once)
    p = Parametrization(kind="fft", decorrelate=False, squash="clamp")
    for size in (32, 224):
        noise = torch.randn(p.shape(4, size), generator=torch.Generator().manual_seed(0), dtype=D)
        assert 1.0 < float(p.spatial(noise).std()) < 1.5, size


@pytest.mark.parametrize("kind,decorrelate,squash", COMBOS)
def test_init_is_seeded_small_and_grey_centred(kind, decorrelate, squash):
    p = Parametrization(kind=kind, decorrelate=decorrelate, squash=squash)
    a = p.init(2, (8, 8), torch.Generator().manual_seed(5))
    b = p.init(2, (8, 8), torch.Generator().manual_seed(5))
    c = p.init(2, (8, 8), torch.Generator().manual_seed(6))
    assert a.dtype == torch.float32 and a.shape == p.shape(2, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    img = p.to_image(a)
    assert float((img - 0.5).abs().max()) < 0.1  # close to mid-grey
    noise = p.spatial(a.double() - p.from_image(torch.full((2, 3, 8, 8), 0.5, dtype=D)), (8, 8))
    assert float(noise.std()) == pytest.approx(0.01, rel=1e-5)  # init_std is the latent image's spread
    grey = Parametrization(kind=kind, decorrelate=decorrelate, squash=squash, init_std=0).init(1, 8, torch.Generator())
    assert torch.allclose(p.to_image(grey), torch.full((1, 3, 8, 8), 0.5), atol=1e-6)


def test_to_input_applies_the_models_normalisation_and_gradients_reach_the_params():
    p = Parametrization(kind="fft", decorrelate=True, squash="sigmoid")
    params = p.init(1, 8, torch.Generator().manual_seed(0)).requires_grad_()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = p.to_input(params, mean, std)
    img = p.to_image(params)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, (img - m) / s, atol=1e-6)
    assert torch.equal(normalise(img, None, None), img)
    x[0, 0, 3, 4].backward()
    assert params.grad is not None and torch.isfinite(params.grad).all() and bool(params.grad.abs().sum() > 0)


@pytest.mark.parametrize("kwargs,needle", [
    ({"kind": "fftt"}, "parametrization.kind"),
    ({"squash": "tanh"}, "parametrization.squash"),
    ({"decay": -1.0}, "parametrization.decay"),
    ({"kind": "pixel", "decay": 2.0}, "parametrization.decay"),
    ({"decorrelate": "yes"}, "parametrization.decorrelate"),
    ({"init_std": -0.1}, "parametrization.init_std"),
])
def test_bad_parametrization_values_name_the_key(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as e:
        Parametrization(**kwargs)
    if kwargs.get("kind") == "fftt":
        assert "close matches: fft" in str(e.value)


def test_errors_use_the_key_the_parametrization_came_from():
    with pytest.raises(ConfigError, match=r"method\.class_model\.parametrization\.squash"):
        Parametrization(squash="soft", key="method.class_model.parametrization")


# --- transforms --------------------------------------------------------------------------------------

def test_empty_stack_is_the_identity():
    img = pixels((2, 3, 9, 9), dtype=torch.float32)
    for stack in (TransformStack(), build_transforms(None), build_transforms([])):
        assert len(stack) == 0 and stack(img, torch.Generator()) is img


@pytest.mark.parametrize("name", ["standard", "robust"])
def test_transforms_are_deterministic_for_a_seed_and_differ_between_seeds(name):
    from cnnviz.methods._transforms import NAMED

    img = pixels((2, 3, 32, 32), dtype=torch.float32)
    stack = NAMED[name]()
    a = stack(img, torch.Generator().manual_seed(0))
    torch.manual_seed(123)  # the global generator plays no part
    b = stack(img, torch.Generator().manual_seed(0))
    outs = [stack(img, torch.Generator().manual_seed(s)) for s in range(1, 4)]
    assert torch.equal(a, b)
    assert any(o.shape != a.shape or not torch.equal(o, a) for o in outs)
    # one generator drives successive calls: steps 1 and 2 of an optimisation see different transforms
    g = torch.Generator().manual_seed(0)
    first, second = stack(img, g), stack(img, g)
    assert torch.equal(first, a) and (first.shape != second.shape or not torch.equal(first, second))


def test_the_named_stacks_are_the_documented_steps():
    from cnnviz.methods._transforms import robust_transforms

    pad, jit, scale, rot, jit2 = standard_transforms().steps
    assert (pad, jit, jit2) == (Pad(12), Jitter(8), Jitter(4))
    assert scale.factors == pytest.approx([0.9 + 0.02 * i for i in range(11)]) and rot.degrees == tuple(range(-10, 11))
    pad, jit, scale, rot, jit2 = robust_transforms().steps
    assert (pad, jit, jit2) == (Pad(16), Jitter(16), Jitter(8))
    assert scale.factors == pytest.approx([0.8 + 0.05 * i for i in range(9)]) and rot.degrees == tuple(range(-15, 16, 3))


def test_gradients_flow_through_every_step():
    img = pixels((1, 3, 24, 24), dtype=torch.float32).requires_grad_()
    stack = build_transforms([{"pad": 4, "mode": "reflect"}, {"jitter": 3}, {"scale": [1.1]}, {"rotate": [7]}])
    out = stack(img, torch.Generator().manual_seed(0))
    out.square().sum().backward()
    assert torch.isfinite(img.grad).all() and float(img.grad.abs().min(dim=1).values.mean()) > 0


def test_each_step_does_what_it_says():
    img = pixels((1, 3, 6, 8), dtype=torch.float32)
    g = torch.Generator()
    padded = Pad(2, "constant", 0.25)(img, g)
    assert padded.shape[-2:] == (10, 12) and torch.equal(padded[..., 2:-2, 2:-2], img)
    assert bool((padded[..., 0, :] == 0.25).all())
    reflected = Pad(1, "reflect")(img, g)
    assert torch.equal(reflected[..., 0, 1:-1], img[..., 1, :])
    # jitter is a crop at an offset in [0, d]: it matches the input at one of those offsets
    cropped = Jitter(2)(img, torch.Generator().manual_seed(4))
    assert cropped.shape[-2:] == (4, 6)
    assert any(torch.equal(cropped, img[..., dy:dy + 4, dx:dx + 6]) for dy in range(3) for dx in range(3))
    assert Scale((2.0,))(img, g).shape[-2:] == (12, 16)
    assert Scale((1.0,))(img, g) is img and Rotate((0.0,))(img, g) is img
    # 90 degrees on a square image is a 90 degree turn (counter-clockwise on screen, like rot90)
    sq = pixels((1, 3, 7, 7), dtype=D)
    assert torch.allclose(rotate(sq, 90.0), torch.rot90(sq, 1, dims=(-2, -1)), atol=1e-12)
    assert torch.allclose(rotate(sq, 360.0), sq, atol=1e-12)


@pytest.mark.parametrize("spec,needle", [
    ([{"jiter": 4}], "close matches: jitter"),
    ([{"pad": 4, "mode": "wrap"}], r"transforms\[0\]\.mode"),
    ([{"jitter": -1}], r"transforms\[0\]\.jitter"),
    ([{"jitter": 1.5}], r"transforms\[0\]\.jitter"),
    ([{"pad": 1}, {"scale": []}], r"transforms\[1\]\.scale"),
    ([{"scale": [0.0, 1.0]}], "must be > 0"),
    ([{"rotate": [5], "mode": "reflect"}], "takes no option mode"),
    ([{"jitter": 2, "rotate": [5]}], "exactly one"),
])
def test_bad_transform_specs_name_the_key(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        build_transforms(spec)


# --- objectives on a hand-built model ------------------------------------------------------------------

def hand_model(inplace_relu: bool = False) -> nn.Sequential:
    """conv 1x1 (3 -> 2): a0 = x0 + 0.1, a1 = x1 − x2; ReLU; global mean; fc (2 -> 3):
    logits = [m0, m1, 2·m0 − m1 + 1] with m = the channel means after the ReLU."""
    conv = nn.Conv2d(3, 2, 1)
    fc = nn.Linear(2, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, -1]]).view(2, 3, 1, 1))
        conv.bias.copy_(torch.tensor([0.1, 0.0]))
        fc.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [2, -1]]))
        fc.bias.copy_(torch.tensor([0.0, 0, 1]))
    return nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(inplace=inplace_relu),
                                     pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=fc)).double()


def hand_input():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 5, 4, generator=g, dtype=D)


@pytest.mark.parametrize("inplace", [False, True])
def test_objectives_have_their_hand_computed_values(inplace):
    model, x = hand_model(inplace), hand_input()
    a0, a1 = x[:, 0] + 0.1, x[:, 1] - x[:, 2]  # the conv's output, before the ReLU
    r0, r1 = a0.clamp(min=0), a1.clamp(min=0)
    m0, m1 = r0.mean((1, 2)), r1.mean((1, 2))
    cases = [
        (Channel("conv", 1), a1.mean((1, 2))),
        (Channel("relu", 0), m0),
        (Neuron("conv", 0), a0[:, 2, 2]),  # centre of a 5x4 map: (5//2, 4//2)
        (Neuron("conv", 1, y=4, x=0), a1[:, 4, 0]),
        (Direction("conv", [2.0, -3.0]), (2 * a0 - 3 * a1).mean((1, 2))),
        (DeepDream("conv"), (a0 ** 2 + a1 ** 2).mean((1, 2)) / 2),
        (ClassLogit(2), 2 * m0 - m1 + 1),
        (ClassLogit([0, 1]), torch.stack([m0[0], m1[1]])),
        (L2(), ((x - 0.5) ** 2).mean((1, 2, 3))),
        (Channel("conv", 1) - 0.5 * Neuron("conv", 0) + 2 * ClassLogit(0), a1.mean((1, 2)) - 0.5 * a0[:, 2, 2] + 2 * m0),
        (-Channel("conv", 0), -a0.mean((1, 2))),
    ]
    for objective, expected in cases:
        before = hook_count(model)
        with probing(model, objective) as probe:
            value = objective(probe(x, pixels=x))
        assert hook_count(model) == before == 0
        assert value.shape == (2,)
        assert torch.allclose(value, expected, atol=1e-12), repr(objective)


def test_total_variation_is_the_mean_squared_neighbour_difference():
    p = torch.tensor([[0.0, 1.0], [0.5, 0.5]], dtype=D).expand(1, 3, 2, 2)
    # vertical: (0.5, -0.5) -> 0.25 each; horizontal: (1, 0) -> mean 0.5
    assert torch.allclose(TotalVariation()(Probe(p, {}, None)), torch.tensor([0.25 + 0.5], dtype=D))


def test_a_direction_along_one_channel_is_that_channel():
    model, x = hand_model(), hand_input()
    with probing(model, Channel("conv", 1)) as probe:
        got = probe(x)
    assert torch.allclose(Direction("conv", [0.0, 1.0])(got), Channel("conv", 1)(got), atol=0)


def test_diversity_of_identical_images_is_minus_one_and_of_orthogonal_grams_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 4, 3, 3, generator=g, dtype=D)
    same = Diversity("l")(Probe(None, {"l": a.repeat(3, 1, 1, 1)}, None))
    assert torch.allclose(same, torch.full((3,), -1.0, dtype=D), atol=1e-12)
    assert torch.equal(Diversity("l")(Probe(None, {"l": a}, None)), torch.zeros(1, dtype=D))  # no pair
    # one image lights channel 0 only, the other channel 1 only: Gram matrices diag(s, 0) and diag(0, t)
    ortho = torch.zeros(2, 2, 3, 3, dtype=D)
    ortho[0, 0], ortho[1, 1] = 1.0, 2.0
    assert torch.allclose(Diversity("l")(Probe(None, {"l": ortho}, None)), torch.zeros(2, dtype=D), atol=1e-15)


def test_diversity_matches_a_float64_reference_and_is_differentiable():
    g = torch.Generator().manual_seed(1)
    act = torch.randn(4, 3, 2, 5, generator=g, dtype=D).requires_grad_()
    value = Diversity("l")(Probe(None, {"l": act}, None))
    got = value.detach()
    grams = [(a.flatten(1) @ a.flatten(1).T).flatten() for a in act.detach()]
    for b in range(4):
        cos = [float(torch.dot(grams[b], grams[j]) / (grams[b].norm() * grams[j].norm())) for j in range(4) if j != b]
        assert float(got[b]) == pytest.approx(-sum(cos) / 3, abs=1e-12)
    value.sum().backward()
    assert torch.isfinite(act.grad).all() and bool(act.grad.abs().sum() > 0)


def test_probing_stops_at_the_last_layer_unless_logits_are_needed():
    model, x = hand_model(), hand_input()
    calls = []
    handle = model.fc.register_forward_hook(lambda *_: calls.append(1))
    try:
        with probing(model, Channel("conv", 0) + DeepDream("relu")) as probe:
            got = probe(x)
        assert got.logits is None and not calls and set(got.acts) == {"conv", "relu"}
        with probing(model, Channel("conv", 0) + ClassLogit(1)) as probe:
            got = probe(x)
        assert got.logits is not None and calls == [1]
    finally:
        handle.remove()
    assert hook_count(model) == 0


def test_probing_removes_its_hooks_after_an_error():
    model, x = hand_model(), hand_input()
    with pytest.raises(ConfigError, match="channel 5 is out of range"):
        with probing(model, Channel("conv", 5)) as probe:
            Channel("conv", 5)(probe(x))
    assert hook_count(model) == 0
    with pytest.raises(ConfigError, match="not found"):
        with probing(model, Channel("convv", 0)):
            pass
    assert hook_count(model) == 0


@pytest.mark.parametrize("objective,needle", [
    (Neuron("conv", 0, y=9, x=0), "outside the 5x4 map"),
    (Direction("conv", [1.0, 2.0, 3.0]), "3 entries but layer 'conv' has 2 channels"),
    (ClassLogit(7), "class 7 is out of range; the model has 3 classes"),
    (ClassLogit([0, 1, 2]), "3 classes for a batch of 2"),
])
def test_bad_objective_arguments_say_what_is_wrong(objective, needle):
    model, x = hand_model(), hand_input()
    with probing(model, objective) as probe:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
            objective(probe(x))


def test_gradient_of_an_objective_reaches_the_parameters_through_transforms():
    """The whole chain a technique will run: params -> pixels -> transforms -> normalise -> probe."""
    model = hand_model()
    p = Parametrization(kind="fft", decorrelate=True, squash="sigmoid")
    params = p.init(1, 12, torch.Generator().manual_seed(0), dtype=D).requires_grad_()
    objective = Channel("conv", 1) + ClassLogit(2) - 1e-3 * L2()
    g = torch.Generator().manual_seed(0)
    with probing(model, objective) as probe:
        img = p.to_image(params)
        x = normalise(standard_transforms()(img, g), [0.5] * 3, [0.25] * 3)
        objective(probe(x, pixels=img)).sum().backward()
    assert torch.isfinite(params.grad).all() and bool(params.grad.abs().sum() > 0)


def test_a_few_gradient_steps_raise_a_channel_objective():
    """Sign-gradient ascent (Adam's first steps, without importing torch.optim's 1 s of machinery)."""
    model = hand_model()
    p = Parametrization(kind="fft", decorrelate=True, squash="sigmoid")
    params = p.init(2, 16, torch.Generator().manual_seed(0), dtype=D).requires_grad_()
    objective = Channel("relu", 1)
    stack, g = build_transforms([{"pad": 2}, {"jitter": 2}]), torch.Generator().manual_seed(0)
    with probing(model, objective) as probe:
        start = float(objective(probe(p.to_image(params))).mean().detach())
        for _ in range(20):
            (grad,) = torch.autograd.grad(objective(probe(stack(p.to_image(params), g))).sum(), params)
            with torch.no_grad():
                params += 0.2 * grad.sign()
        end = float(objective(probe(p.to_image(params))).mean().detach())
    assert end > start + 0.1, (start, end)  # a1 = x1 − x2 is at most 1: from ~0 it climbs


# --- registry and config strings ------------------------------------------------------------------------

def test_every_piece_is_registered_once_under_its_name():
    assert set(OBJECTIVES.names()) >= {"class_logit", "channel", "neuron", "direction", "deep_dream", "diversity", "l2", "tv"}
    assert OBJECTIVES.get("channel") is Channel
    with pytest.raises(ValueError, match="already registered"):
        OBJECTIVES.register("channel")(type("Other", (Channel,), {}))


def test_an_unknown_objective_lists_close_matches_and_names_the_key():
    with pytest.raises(ConfigError, match=r"unknown objective 'chanel' \(method\.filter_visualization\.objective\); close matches: channel"):
        make("chanel", "conv", 0, key="method.filter_visualization.objective")
    with pytest.raises(ConfigError, match=r"neuron\(layer, channel, y=None, x=None\) cannot take"):
        make("neuron")
    with pytest.raises(ConfigError, match=r"l2 cannot take these arguments"):
        make("l2", 3)


def test_parse_objective_builds_the_weighted_sum():
    obj = parse_objective("class_logit(2) - 1e-3*l2 + 0.5*channel('conv', 1) + neuron(layer='conv', channel=0, y=1, x=2)")
    assert isinstance(obj, Sum)
    weights = [w for w, _ in obj.terms()]
    assert weights == [1.0, -1e-3, 0.5, 1.0]
    assert obj.needs_logits and obj.layers == ("conv",)
    model, x = hand_model(), hand_input()
    with probing(model, obj) as probe:
        got = probe(x, pixels=x)
    a0, a1 = x[:, 0] + 0.1, x[:, 1] - x[:, 2]
    m0, m1 = a0.clamp(min=0).mean((1, 2)), a1.clamp(min=0).mean((1, 2))
    expected = 2 * m0 - m1 + 1 - 1e-3 * ((x - 0.5) ** 2).mean((1, 2, 3)) + 0.5 * a1.mean((1, 2)) + a0[:, 1, 2]
    assert torch.allclose(obj(got), expected, atol=1e-12)
    assert set(obj.parts(got)) == {"class_logit(2)", "l2", "channel('conv', 1)", "neuron('conv', 0, y=1, x=2)"}
    assert repr(parse_objective("-channel('a', 1)")) == "-1*channel('a', 1)"


@pytest.mark.parametrize("text,needle", [
    ("class_logit(1) * l2", "multiplies an objective by a number"),
    ("2 + l2", "join objectives"),
    ("0.5", "is a number, not an objective"),
    ("__import__('os')", "unknown objective '__import__'"),
    ("channel('a', x)", "arguments must be numbers"),
    ("l2 / 2", "is not allowed"),
    ("class_logit(", "is not an objective expression"),
    ("dep_dream('a')", "close matches: deep_dream"),
])
def test_parse_objective_rejects_what_it_does_not_understand(text, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        parse_objective(text, key="method.class_model.objective")


def test_a_module_called_twice_is_read_at_its_first_call_with_or_without_logits():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.fc = nn.Linear(2, 1).double()

        def forward(self, x):
            return self.fc(self.act(self.act(x) - 1.0).mean((2, 3)))

    model, x = Twice(), torch.tensor([[[[2.0]], [[-1.0]]]], dtype=D)
    for objective in (Channel("act", 0), Channel("act", 0) + 0 * ClassLogit(0)):
        with probing(model, objective) as probe:
            assert float(Channel("act", 0)(probe(x))) == 2.0  # relu(2), not relu(relu(2) - 1) = 1
