"""`visionselector`: the Learnable Importance Scorer of VisionSelector (paper 000, Sec. 3.2, Eq. 1-2).

Holds the method's config (`VisionSelectorConfig`), its scorer and its registration. Its training recipe
(Differentiable Top-K, BCE constraint) is `hf_tokenprune/training/methods/visionselector.py`.

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .configuration_token_prune import TokenPruneConfig, check_float, check_int
from .token_selectors import TokenSelector, register_selector


@dataclass
class VisionSelectorConfig(TokenPruneConfig):
    """`TokenPruneConfig` of `visionselector`.

    Fields (besides the shared ones):
        scorer_hidden_size: projection width d; `None` = half the LLM width (paper 000 Sec. 4.2).
        scorer_init_std: std of the near-zero init of W_q, W_k (paper 000 Sec. 3.2).
    """

    method: str = field(default="visionselector", metadata={"help": "Registered selector name."})
    scorer_hidden_size: int | None = field(
        default=None, metadata={"help": "Projection width d of W_q, W_k (>= 1); None = half the LLM width."}
    )
    scorer_init_std: float = field(
        default=1e-3, metadata={"help": "Std of the near-zero init of the Q/K projections (>= 0)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.scorer_hidden_size, "scorer_hidden_size", 1, optional=True)
        check_float(self.scorer_init_std, "scorer_init_std")


class VisionSelectorScorer(TokenSelector):
    """Scores each visual token by its mean scaled dot-product with all tokens of the same image.

    Q = V W_q and K = V W_k (Eq. 1); s_i = (1/N) sum_j q_i . k_j / sqrt(d) (Eq. 2). Because the mean over j
    is linear, s_i = q_i . mean_j(k_j) / sqrt(d), and because q_i = W_q v_i is linear too, s_i = v_i . (W_q^T
    mean_j(k_j)) / sqrt(d): one D-vector per image, then one dot product per token. The score costs O(N D + D d)
    instead of the O(N D d) of projecting every query (at LLaVA-NeXT-7B widths, 2,928 tokens of 4,096 into d = 2,048:
    0.03 instead of 49 GFLOP), and neither Q nor the N x N matrix of Eq. 2 is ever built.

    Sizes: `d = config.scorer_hidden_size`, else `llm_hidden_size // 2` (the paper sets d = 1792 for the
    3584-wide Qwen2.5-VL-7B, 1024 for the 2048-wide 3B and 2560 for the 5120-wide 32B; Sec. 4.2, A.7-A.8).
    The projections have no bias, as W_q, W_k in Eq. 1 (a query bias would add the same constant to every
    score; a key bias is a plain linear term the paper does not have). V is used as it comes from the
    projector, with no normalisation, as in Eq. 1. Weights start near zero (N(0, `config.scorer_init_std`),
    Sec. 3.2) so the first training steps see almost uniform scores.

    Attributes:
        query_proj: W_q, `input_dim -> d`.
        key_proj: W_k, `input_dim -> d`.
    """

    trainable = True
    default_feature_source = "projector_output"
    papers = ("VisionSelector: End-to-End Learnable Visual Token Compression for Efficient Multimodal LLMs",)

    def __init__(self, config: VisionSelectorConfig, input_dim: int, llm_hidden_size: int) -> None:
        super().__init__(config, input_dim, llm_hidden_size)
        projection_dim = config.scorer_hidden_size or max(llm_hidden_size // 2, 1)
        self.projection_dim = projection_dim
        self.query_proj = nn.Linear(input_dim, projection_dim, bias=False)
        self.key_proj = nn.Linear(input_dim, projection_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.query_proj.weight, mean=0.0, std=self.config.scorer_init_std)
        nn.init.normal_(self.key_proj.weight, mean=0.0, std=self.config.scorer_init_std)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> scores: (N,), s_i of Eq. 2."""
        if features.ndim != 2:
            raise ValueError(f"`features` must be (N, input_dim) for one image, got shape {tuple(features.shape)}")
        token_mask = torch.ones(1, features.shape[0], dtype=torch.bool, device=features.device)
        return self.score_padded(features[None], token_mask)[0]

    def score_padded(self, features: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """features: (S, N, input_dim) padded segments, token_mask: (S, N) True at real tokens -> scores (S, N).

        One image alone is the case S = 1 without padding, so batched and per-image scores are computed alike.
        """
        features = features.to(self.query_proj.weight.dtype)
        # mean_j(V W_k) = mean_j(V) W_k: project one averaged token per segment instead of all N (padding adds zeros).
        mask = token_mask[..., None].to(features.dtype)
        mean_features = (features * mask).sum(dim=1) / mask.sum(dim=1)
        mean_key = self.key_proj(mean_features)
        # (W_q v_i) . k = v_i . (W_q^T k): fold the key into the query projection, (S, d) @ (d, D) -> (S, D).
        direction = mean_key @ self.query_proj.weight
        return (features @ direction[..., None]).squeeze(-1) / math.sqrt(self.projection_dim)


register_selector("visionselector", VisionSelectorConfig, VisionSelectorScorer)
