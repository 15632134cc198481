"""SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825), wrapping any gradient technique.

    σ = noise_level · (max(x) − min(x))          x_i = x + N(0, σ²),  i = 1..n_samples
    smoothgrad:  mean_i g(x_i)       variant sq:  mean_i g(x_i)²       variant var (VarGrad,
    Adebayo et al. 2018):  mean_i g(x_i)² − (mean_i g(x_i))²

``inner`` names the wrapped technique (``vanilla_backprop``, ``guided_backprop``, ``deconvnet``,
``grad_times_image``, ``integrated_gradients`` …) and ``inner_params`` its hyperparameters. Noisy
copies are evaluated ``batch_size`` at a time, from a generator seeded with ``seed``. σ is relative
to the image's range: on a constant image it is 0, every copy is the image itself and the result is
the inner technique's plain map; the Attribution then carries a warning saying so.

Example::

    attr = get_method("smoothgrad")(inner="guided_backprop", n_samples=50)(model, x, target=56)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

from ..core.attribution import Attribution
from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.hooks import model_state_kept
from ..speed.fastpath import forward_fn
from ..core.maps import result_dtype, to_numpy
from ..core.registry import register
from . import get_method, list_methods
from ..speed.streams import in_order, per_stream, stream_count
from ..core.targets import class_indices
from .base import GradientMethod, Method, PerturbationMethod

VARIANTS = ("mean", "sq", "var")


@register("smoothgrad")
@dataclass
class SmoothGrad(Method):
    main_hyperparameter = ("noise_level", (0.1, 0.15, 0.25))  # Smilkov et al.: 10-20 % works best
    many_passes = True
    renders = ("color", "gray", "pos_sal", "neg_sal")
    #: a registered input-space gradient or perturbation technique; any other is refused by ``check``
    inner: str = param("vanilla_backprop", choices=list_methods, kind="method")
    inner_params: dict[str, Any] = field(default_factory=dict)
    n_samples: int = param(50, min=1)
    noise_level: float = param(0.15, min=0)
    variant: str = param("mean", choices=VARIANTS)
    batch_size: int = param(10, min=1)
    seed: int = param(0, min=0)
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)

    def inner_method(self) -> Method:
        cls = get_method(self.inner)
        if not issubclass(cls, (GradientMethod, PerturbationMethod)):
            raise ConfigError(f"method.smoothgrad.inner: '{self.inner}' is not a gradient technique "
                              "(nor a perturbation technique: an input-space map)")
        params = dict(self.inner_params)
        names = {f.name for f in dataclasses.fields(cls)}
        for key in ("input_mean", "input_std"):  # pass the normalisation on to a pixel-space inner
            if key in names and params.get(key) is None:
                params[key] = getattr(self, key)
        unknown_keys = set(params) - names
        if unknown_keys:
            raise ConfigError(f"method.smoothgrad.inner_params: {sorted(unknown_keys)} are not hyperparameters of {self.inner}")
        return cls(**params)

    def check(self, model):
        self.inner_method().check(model)

    def noisy_copies(self, xb: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
        """``n_samples`` noisy copies of one image ``xb``, ``size`` at a time."""
        # a generator per image: an image's result does not depend on the batch it came in
        generator = torch.Generator().manual_seed(self.seed)
        sigma = self.noise_level * float(xb.max() - xb.min())
        for start in range(0, self.n_samples, size):
            k = min(size, self.n_samples - start)
            # one draw per sample: the noise of sample i does not depend on batch_size
            noise = torch.cat([torch.randn((1, *xb.shape[1:]), generator=generator, dtype=xb.dtype) for _ in range(k)])
            yield xb + sigma * noise.to(xb.device)

    def attribute(self, model, x, target, layer):
        if self.variant not in VARIANTS:
            raise unknown("variant", "method.smoothgrad.variant", self.variant, VARIANTS)
        if self.n_samples < 1 or self.batch_size < 1:
            raise ConfigError("method.smoothgrad: n_samples and batch_size must be >= 1")
        inner = self.inner_method()
        x = x.detach()
        net, forward = forward_fn(model, x)
        with model_state_kept(net), torch.no_grad():
            logits = forward(x)
        idx = class_indices(target, logits)
        streams = stream_count(model, x) if inner.concurrent() else 1
        size = per_stream(self.batch_size, streams)
        out = []
        flat = [b for b in range(x.shape[0]) if self.noise_level != 0 and float(x[b].max() - x[b].min()) == 0]
        for b in range(x.shape[0]):
            xb = x[b:b + 1]

            def sums(noisy: torch.Tensor, b=b) -> tuple[torch.Tensor, torch.Tensor]:
                t = target if idx is None else [int(idx[b])] * len(noisy)
                g = torch.from_numpy(inner(model, noisy, t).values).double()
                return g.sum(dim=0, keepdim=True), g.pow(2).sum(dim=0, keepdim=True)

            total = torch.zeros_like(xb, dtype=torch.float64)
            squares = torch.zeros_like(xb, dtype=torch.float64)
            for part, part_sq in in_order(sums, self.noisy_copies(xb, size), streams):
                total += part
                squares += part_sq
            mean, mean_sq = total / self.n_samples, squares / self.n_samples
            out.append({"mean": mean, "sq": mean_sq, "var": mean_sq - mean.pow(2)}[self.variant])
        return Attribution(
            method=self.name,
            values=torch.cat(out).to(result_dtype(x)).numpy(),
            logits=to_numpy(logits),
            target=() if idx is None else tuple(int(i) for i in idx),
            params=self.params(),
            warnings=self.constant_image_warning(flat, x.shape[0]),
            # row i of a batch carries the warning of image i alone
            per_row=tuple({"warnings": self.constant_image_warning([b] if b in flat else [], 1)}
                          for b in range(x.shape[0])) if x.shape[0] > 1 else (),
        )

    def constant_image_warning(self, flat: list[int], batch: int) -> tuple[str, ...]:
        """Why a map equals the inner technique's plain map: the images ``flat`` were constant."""
        if not flat:
            return ()
        which = "the image is" if batch == 1 else f"image {', '.join(map(str, flat))} of the batch {'is' if len(flat) == 1 else 'are'}"
        return (f"{self.name}: {which} constant (max - min = 0), so the noise σ = noise_level · (max - min) was 0 and "
                f"the result is the plain {self.inner} map of {self.n_samples} identical copies; explain an image "
                "with some contrast, or use the inner technique directly for the same map faster",)
