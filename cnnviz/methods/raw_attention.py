"""Raw attention: the attention probabilities of one block of a vision transformer, the class
token's row over the patch tokens — what the class token attends to there (the baseline that
attention rollout, Abnar & Zuidema 2020, and Chefer et al. 2021 improve on; Dosovitskiy et al.
2021, "An Image is Worth 16x16 Words", Fig. 6, show such maps).

    A = softmax(q kᵀ / √d)   of block ``block`` (null: the last), (heads, N, N)
    map = A[head, cls, patches]    (``head`` null: the mean over the heads)

Not class-specific (``uses_target`` False); values are probabilities, kept raw.

Example::

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    attr = get_method("raw_attention")(block=5, head=0)(model, x)   # (B, 14, 14)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..core.constraints import param
from ..core.errors import ConfigError
from ..core.registry import register
from ._attention import AttentionMethod, attention_modules


@register("raw_attention")
@dataclass
class RawAttention(AttentionMethod):
    uses_target = False
    #: index of the block (0 = first); null = the last
    block: Optional[int] = param(None, min=0)
    #: index of the head; null = the mean over the heads
    head: Optional[int] = param(None, min=0)

    def check(self, model):
        modules = attention_modules(model, self.name)
        if self.block is not None and self.block >= len(modules):
            raise ConfigError(f"method.{self.name}.block={self.block}, but the model has {len(modules)} blocks "
                              f"(0..{len(modules) - 1}); set block=null for the last")
        _, module = modules[-1 if self.block is None else self.block]
        heads = int(module.num_heads)
        if self.head is not None and self.head >= heads:
            raise ConfigError(f"method.{self.name}.head={self.head}, but that block has {heads} heads "
                              f"(0..{heads - 1}); set head=null for their mean")

    def attribute_layers(self, model, x, target, layers):
        self.check(model)  # before the forward: the refusal costs nothing
        return super().attribute_layers(model, x, target, layers)

    def token_map(self, probs, grads):
        p = probs[-1 if self.block is None else self.block]
        p = p.mean(dim=1) if self.head is None else p[:, self.head]
        return p[:, 0]
