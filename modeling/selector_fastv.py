"""`fastv`: drops visual tokens inside the language model, by the attention the last prompt token pays them.

FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024): decoder layers 0..K-1 run on every
token; the attention row of the last prompt token in layer K-1, averaged over heads, ranks each image's visual
tokens; layers K.. run on the kept ones only, at their original positions. The dropping itself is
`llm_pruning.InLLMTokenDrop`; this file holds the method's config and its (training-free) selector, which turns
those attention values into keep indices with the same budget rules as every other method.

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .configuration_token_prune import TokenPruneConfig, check_int
from .token_selectors import TokenSelector, register_selector


@dataclass
class FastVConfig(TokenPruneConfig):
    """`TokenPruneConfig` of `fastv`.

    Fields (besides the shared ones):
        layer: K, the first decoder layer that sees only the kept tokens. Layers 0..K-1 hold every token (in the
            KV cache too); layer K-1's attention ranks the tokens. The paper's default is 2.
    """

    method: str = field(default="fastv", metadata={"help": "Registered selector name."})
    layer: int = field(
        default=2,
        metadata={"help": "FastV's K: layers 0..K-1 see every token, layers K.. only the kept ones (an int >= 1)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.layer, "layer", minimum=1)


class FastVSelector(TokenSelector):
    """Ranks a segment's tokens by their `features`, which for this method are (N, 1): the attention the last prompt
    token pays each token in decoder layer K-1, averaged over heads (filled in by the language model's forward)."""

    #: selection happens inside the language model, after layer `config.layer` - 1, not before its first layer.
    in_llm: ClassVar[bool] = True
    papers: ClassVar[tuple[str, ...]] = (
        "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large "
        "Vision-Language Models",
    )

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, 1) attention values -> scores (N,)."""
        return features[:, 0]

    def score_padded(self, features: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """features: (S, N, 1) -> scores (S, N)."""
        return features[..., 0]

    def check_layer(self, num_layers: int) -> int:
        """K, checked against a language model of `num_layers` decoder layers (before any compute)."""
        layer = self.config.layer
        if not 1 <= layer < num_layers:
            raise ValueError(
                f"`layer` of the fastv config is {layer} but this language model has {num_layers} decoder layers: "
                f"it must be in [1, {num_layers - 1}] so that some layers see only the kept tokens"
            )
        return layer


register_selector("fastv", FastVConfig, FastVSelector)
