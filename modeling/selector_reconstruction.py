"""`reconstruction`: the Feature Selector of "Adaptive vision token selection" (paper 001, Sec. 4.1.1).

Holds the method's config (`ReconstructionConfig`), its selector and its registration; the feature / image
reconstructors and the Gumbel-Softmax training loop are train-only and live in
`hf_tokenprune/training/methods/reconstruction.py`.

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .selector_autoselect import TransformerScorerConfig, TransformerTokenScorer
from .token_selectors import register_selector


@dataclass
class ReconstructionConfig(TransformerScorerConfig):
    """`TokenPruneConfig` of `reconstruction`: the `TransformerScorerConfig` sizes (default depth 4, Sec. 4.1.1)."""

    method: str = field(default="reconstruction", metadata={"help": "Registered selector name."})


class ReconstructionSelector(TransformerTokenScorer):
    """Four Transformer layers and a two-way [drop, keep] head per visual token.

    In training the head's logits feed a Gumbel-Softmax that samples the binary mask M (Eq. 5); at
    inference the paper ranks tokens by the head's logits and keeps a fixed number (Sec. 4.1.1), which here
    is `score = keep_logit - drop_logit`, the log-odds of keeping.

    Sizes: `scorer_num_layers` defaults to 4 (Sec. 4.1.1, and the best depth in the 1-8 layer ablation of
    Sec. 5.5). The paper gives no width; the default is `min(input_dim, 128)`. At 512 the four layers cost
    0.4-1.8% of time to first token on one CPU thread at 7B widths (1.5% on LLaVA-NeXT-7B's 2,928 tokens,
    where attention over the whole image dominates), over the project's 0.5% selection budget; at 256 still
    0.6% there, at 128 0.3% (docs/benchmarks.md, float32). Heads: the paper gives none; the default is one head of
    128 (`DEFAULT_HEAD_DIM`): in bfloat16 on a CPU with AMX, 4 heads of 32 cost 99.6 ms of LLaVA-NeXT-7B's 13.5 s
    (0.74%), 80% of it in the attention kernel, which runs 2.6x faster per FLOP at head dim 128: one head of 128
    costs 47 ms (0.39%).

    Attributes:
        encoder: the `TokenTransformer`.
        head: `hidden_size -> 2` logits, [drop, keep].
        mask_embedding: (input_dim,) the shared learnable E_masked that replaces dropped tokens during
            training, so the feature reconstructor sees where content was removed (Sec. 4.1.1, Eq. 5). It
            lives in the input feature space and is unused at inference, where dropped tokens are removed.
    """

    default_num_layers = 4
    head_outputs = 2
    max_default_hidden_size = 128
    papers = ("Adaptive Vision Token Selection for Multi-Modal Inference",)

    def __init__(self, config: ReconstructionConfig, input_dim: int, llm_hidden_size: int) -> None:
        super().__init__(config, input_dim, llm_hidden_size)
        # The paper does not say how E_masked starts; 0.02 is the usual std of a learned mask token (MAE, BEiT).
        self.mask_embedding = nn.Parameter(torch.empty(input_dim).normal_(mean=0.0, std=0.02))

    def keep_logits(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> logits: (N, 2), column 0 = drop, column 1 = keep."""
        return self.head(self.encoder(features))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> scores: (N,), keep logit minus drop logit."""
        logits = self.keep_logits(features)
        return logits[:, 1] - logits[:, 0]

    def score_padded(self, features: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """features: (S, N, input_dim) padded segments, token_mask: (S, N) -> scores (S, N), keep minus drop logit."""
        logits = self.head(self.encoder.forward_padded(features, token_mask))
        return logits[..., 1] - logits[..., 0]


register_selector("reconstruction", ReconstructionConfig, ReconstructionSelector)
