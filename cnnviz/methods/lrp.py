"""Layer-wise relevance propagation (Bach et al. 2015, PLoS ONE; Montavon et al. 2019, "LRP: An
Overview"), with the layer rules

    LRP-ε:   R_i = Σ_j a_i w_ij / (z_j + ε·sign z_j) · R_j,   sign(0) = +1
    LRP-γ:   R_i = Σ_j a_i (w_ij + γ w⁺_ij) / Σ_i' a_i' (w_i'j + γ w⁺_i'j) · R_j
    LRP-z⁺ (= α1β0):  as γ → ∞, positive weights only
    zᴮ:      the input layer, for inputs bounded by the pixel range (see ``relevance.zb_relevance``)

``rule: composite`` (default, Montavon et al. 2019 §10.3): zᴮ at the first layer, γ at the lower
``gamma_fraction`` of the convolutions, ε at the upper convolutions and the dense layers. Other
presets apply one rule everywhere (``epsilon``, ``gamma``, ``zplus``, ``zero`` = LRP-0), with
``first_layer: zb | same``. The relevance starts as the target logit.

The ε actually used depends on ``epsilon_mode``: ``relative`` (default) takes ε · std(z) of the
layer's output z, per image, so one ``epsilon`` suits layers of any scale (Montavon et al. 2019
use 0.25 std), floored at 1e-9 so that a constant output (an all-zero input) gives zero relevance,
not 0/0; ``absolute`` takes ``epsilon`` as it is, the paper's rule.

BatchNorm is folded into the preceding convolution; skip connections split relevance in proportion
to their summands; the model runs in eval mode on a private copy. A layer type without a rule is
refused, naming it. The row records ``relevance_sum`` and ``conservation_gap`` = |Σ R − y_c| / |y_c|
(biases and ε absorb some relevance, so the gap is not zero in general).

Example::

    attr = get_method("lrp")(input_mean=[.5]*3, input_std=[.5]*3)(model, x, target=56)
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Optional

import torch

from ..core.attribution import Attribution
from ..core.constraints import param
from ..core.errors import ConfigError, unknown
from ..core.inputspace import pixel_bounds
from ..core.maps import to_numpy
from ..core.passes import gradient_pass
from ..core.registry import register
from ._lrp_rules import (EPSILON_MODES, LINEAR, check_supported, fold_batchnorms, layer_input, private_copy,
                         relevance_rules, zb_relevance)
from .base import Method

RULES = ("composite", "epsilon", "gamma", "zplus", "zero")
FIRST = ("zb", "same")


@register("lrp")
@dataclass
class LRP(Method):
    main_hyperparameter = ("epsilon", (0.1, 0.25, 0.5))
    renders = ("lrp_heatmap", "color", "gray", "pos_sal", "neg_sal")
    rule: str = param("composite", choices=RULES)
    epsilon: float = param(0.25, min=0)
    epsilon_mode: str = param("relative", choices=EPSILON_MODES, kind="epsilon mode")
    gamma: float = param(0.25, min=0)
    gamma_fraction: float = param(0.5, min=0, max=1)
    first_layer: str = param("zb", choices=FIRST, kind="first layer rule")
    input_mean: Optional[list[float]] = None
    input_std: Optional[list[float]] = param(None, gt=0)

    def layer_rules(self, model) -> tuple[Optional[str], dict[str, str]]:
        """The input layer (if zᴮ) and the rule of every other linear layer."""
        if self.rule not in RULES:
            raise unknown("rule", "method.lrp.rule", self.rule, RULES)
        if self.first_layer not in FIRST:
            raise unknown("first layer rule", "method.lrp.first_layer", self.first_layer, FIRST)
        if self.epsilon_mode not in EPSILON_MODES:
            raise unknown("epsilon mode", "method.lrp.epsilon_mode", self.epsilon_mode, EPSILON_MODES)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LINEAR)]
        if not layers:
            raise ConfigError("lrp needs convolution or linear layers; the model has none")
        convs = [n for n, m in layers if isinstance(m, torch.nn.Conv2d)]
        lower = set(convs[: int(round(self.gamma_fraction * len(convs)))])
        rules = {}
        for name, m in layers:
            if self.rule == "composite":
                rules[name] = "gamma" if name in lower else "epsilon"
            else:
                rules[name] = self.rule
        first = layers[0][0] if self.first_layer == "zb" else None
        if first is not None:
            del rules[first]
        return first, rules

    def check(self, model):
        check_supported(model)
        self.layer_rules(model)

    def attribute(self, model, x, target, layer):
        check_supported(model)
        x = x.detach()
        net = private_copy(model)
        fold_batchnorms(net)
        first, rules = self.layer_rules(net)
        with torch.no_grad():
            folded, original = net(x), model.eval()(x) if not model.training else None
        if original is not None and not torch.allclose(folded, original, rtol=1e-3, atol=1e-3 * float(original.abs().max())):
            raise ConfigError("lrp: folding BatchNorm into the preceding convolutions changed the model's output; "
                              "this architecture's BatchNorm placement is not supported")
        modules = dict(net.named_modules())
        with ExitStack() as stack:
            seen = stack.enter_context(layer_input(modules[first])) if first else []
            p = gradient_pass(net, x, target, layers=[first] if first else [], input_gradient=first is None,
                              rule=relevance_rules(net, rules, self.epsilon, self.gamma, self.epsilon_mode))
        if first is None:
            relevance = x * p.input_gradient
        else:
            a = seen[-1].detach()
            if a.numel() != x.numel():
                raise ConfigError(f"lrp: zB bounds the pixels, but the first layer '{first}' sees a tensor of shape "
                                  f"{tuple(a.shape)}, not the image; use method.lrp.first_layer=same")
            low, high = (b.reshape(a.shape) for b in pixel_bounds(x, self.input_mean, self.input_std))
            relevance = zb_relevance(modules[first], a, p.activations[first], p.gradients[first], low, high).reshape(x.shape)
        idx = list(p.target) if p.target else None
        total = relevance.double().sum(dim=(1, 2, 3))
        score = p.logits[torch.arange(len(idx)), idx].double() if idx else None
        rows = []
        for b in range(len(total)):  # each image's own sums; a batch's rows carry theirs (Attribution.row)
            own = {"relevance_sum": float(total[b])}
            if score is not None:
                own["conservation_gap"] = float((total[b] - score[b]).abs() / score[b].abs().clamp(min=1e-12))
            rows.append({"metrics": own})
        return Attribution(
            method=self.name, values=to_numpy(relevance), logits=to_numpy(p.logits), target=p.target,
            params=self.params(), metrics=rows[0]["metrics"],
            per_row=tuple(rows) if len(rows) > 1 else (),
        )
