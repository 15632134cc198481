"""Guided backpropagation of one filter's activation (Springenberg et al. 2014), as the classic
"layer activation with guided backprop": the gradient of Σ_ij A_f[i, j] (filter ``filter`` of
``layer``) with respect to the input, under the guided ReLU rule. The target is not used.

Example::

    attr = get_method("layer_activation_guided")(filter=5)(model, x, layer="blocks.4")
"""
from dataclasses import dataclass

from ..core.attribution import Attribution
from ..core.constraints import param
from ..core.errors import ConfigError
from ..core.hooks import guided_relus
from ..core.maps import to_numpy
from ..core.passes import BackwardRule, gradient_pass
from ..core.registry import register
from .base import GradientMethod


@register("layer_activation_guided")
@dataclass
class LayerActivationGuided(GradientMethod):
    renders = ("color", "gray", "pos_sal", "neg_sal")
    needs_layer = True
    uses_target = False
    shares_passes = False  # its score is one filter's activation, not the target's: a pass of its own
    filter: int = param(0, min=0)

    def rule(self):
        return BackwardRule("guided")

    def check(self, model):
        with guided_relus(model, method=self.name):
            pass

    def attribute(self, model, x, target, layer):
        def objective(captured):
            act = captured[layer]
            if act.ndim < 2 or not 0 <= self.filter < act.shape[1]:
                raise ConfigError(
                    f"method.{self.name}.filter={self.filter} is out of range: layer '{layer}' has "
                    f"{act.shape[1] if act.ndim >= 2 else 0} channels (shape {tuple(act.shape)})"
                )
            return act[:, self.filter].sum()

        p = gradient_pass(model, x, target, layers=[layer], rule=lambda net: guided_relus(net, method=self.name), objective=objective)
        return Attribution(
            method=self.name, values=to_numpy(p.input_gradient), logits=to_numpy(p.logits), target=(),
            layer=layer, params=self.params(),
        )
