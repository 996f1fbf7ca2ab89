"""`autoselect`: the Scorer of DiffPrune / AutoSelect (papers 002 Sec. 4.2 and A, 004 Sec. 3.2).

Holds the method's config (`AutoSelectConfig`), its inference-time scorer and its registration; the train-only
Soft Top-K, VP-noise throttler and denoiser are not part of the deployed graph (paper 002, Eq. 3) and live in
`hf_tokenprune/training/methods/autoselect.py`. Also holds `TokenTransformer` and `TransformerScorerConfig`, the
Transformer encoder stack and its sizes, which the `reconstruction` selector reuses.

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_token_prune import TokenPruneConfig, check_int
from .token_selectors import TokenSelector, register_selector

# Narrower than paper 002 A's hidden dimension 1024 (the width of the CLIP ViT-L features it reads): see
# `AutoSelectScorer` (selection cost).
MAX_DEFAULT_HIDDEN_SIZE = 256
# Width per head when `scorer_num_heads` is unset: the 7B LLMs' head dim. No paper fixes the scorers' heads (001 gives
# none; 002 A's 16 heads over 1024 are 64 wide). Attention over thousands of tokens dominates these scorers' cost, and
# torch's CPU flash kernel in bfloat16 ran 2.6x more FLOP/s at head dim 128 than at 32 (583 against 226 GFLOP/s, one
# thread, 2,928 tokens, Intel Xeon with AMX; 385 at 64): docs/benchmarks.md, "Selection cost".
DEFAULT_HEAD_DIM = 128


@dataclass
class TransformerScorerConfig(TokenPruneConfig):
    """Sizes of a Transformer-encoder scorer (`autoselect`, `reconstruction`), besides the shared fields.

    Fields:
        scorer_hidden_size: width of the layers; `None` = the method's default.
        scorer_num_layers: encoder layers; `None` = the method's default.
        scorer_num_heads: attention heads per layer; must divide the width. `None` = width // 128 (at least 1,
            lowered to a divisor of the width).
    """

    scorer_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden width of the scorer (>= 1); None = the method's default."}
    )
    scorer_num_layers: int | None = field(
        default=None, metadata={"help": "Transformer layers of the scorer (>= 1); None = the method's default."}
    )
    scorer_num_heads: int | None = field(
        default=None,
        metadata={"help": "Attention heads of the scorer's layers (>= 1); None = width // 128, at least 1."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.scorer_hidden_size, "scorer_hidden_size", 1, optional=True)
        check_int(self.scorer_num_layers, "scorer_num_layers", 1, optional=True)
        check_int(self.scorer_num_heads, "scorer_num_heads", 1, optional=True)


@dataclass
class AutoSelectConfig(TransformerScorerConfig):
    """`TokenPruneConfig` of `autoselect`: the `TransformerScorerConfig` sizes (default depth 2, paper 002 A)."""

    method: str = field(default="autoselect", metadata={"help": "Registered selector name."})


def scorer_sizes(
    config: TransformerScorerConfig, input_dim: int, cap: int = MAX_DEFAULT_HIDDEN_SIZE
) -> tuple[int, int]:
    """(width, heads) of a Transformer scorer.

    Width: `config.scorer_hidden_size`, else `min(input_dim, cap)` (rounded up to a multiple of an explicit head
    count). Heads: `config.scorer_num_heads`, else width // `DEFAULT_HEAD_DIM` (at least 1), lowered to the largest
    count that divides the width.

    Raises ValueError when an explicit `scorer_hidden_size` is not divisible by an explicit `scorer_num_heads`.
    """
    num_heads = config.scorer_num_heads
    if config.scorer_hidden_size is not None:
        hidden_size = config.scorer_hidden_size
        if num_heads is not None and hidden_size % num_heads:
            raise ValueError(
                f"`scorer_hidden_size` ({hidden_size}) must be divisible by `scorer_num_heads` ({num_heads})"
            )
    elif num_heads is not None:
        hidden_size = -(-min(input_dim, cap) // num_heads) * num_heads
    else:
        hidden_size = min(input_dim, cap)
    if num_heads is None:
        num_heads = max(1, hidden_size // DEFAULT_HEAD_DIM)
        while hidden_size % num_heads:
            num_heads -= 1
    return hidden_size, num_heads


class TokenTransformer(nn.Module):
    """Input projection, pre-norm Transformer encoder layers and a final LayerNorm over one image's tokens.

    There is no positional embedding: the features already carry position from the vision encoder, and
    none of the papers adds one, so the output is permutation-equivariant in the tokens.

    Args:
        input_dim: feature width D.
        hidden_size: width H of the layers.
        num_layers: number of encoder layers.
        num_heads: attention heads per layer; must divide `hidden_size`.
    """

    def __init__(self, input_dim: int, hidden_size: int, num_layers: int, num_heads: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(input_dim, hidden_size)
        # The papers give depth, width and heads only; the 4x GELU feed-forward is the ViT block they build on.
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=hidden_size,
                nhead=num_heads,
                dim_feedforward=4 * hidden_size,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(num_layers)
        )
        # Pre-norm layers leave the residual stream unnormalised, so the head reads it through one more norm.
        self.final_norm = nn.LayerNorm(hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> hidden_states: (N, hidden_size)."""
        if features.ndim != 2:
            raise ValueError(f"`features` must be (N, input_dim) for one image, got shape {tuple(features.shape)}")
        return self.forward_padded(features[None], None)[0]

    def forward_padded(self, features: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """features: (S, N, input_dim) segments padded to N, token_mask: (S, N) True at real tokens (None: no padding)
        -> hidden_states (S, N, hidden_size). Padding is masked out of attention as a key, so every real token's state
        is that of its segment run alone; the states at padding are meaningless."""
        hidden_states = self.input_proj(features.to(self.input_proj.weight.dtype))
        # sdpa's boolean mask is True where a key may be attended; (S, 1, 1, N) broadcasts over heads and queries.
        key_mask = None if token_mask is None or bool(token_mask.all()) else token_mask[:, None, None, :]
        for layer in self.layers:
            hidden_states = encoder_block(layer, hidden_states, key_mask)
        return self.final_norm(hidden_states)


def encoder_block(
    layer: nn.TransformerEncoderLayer, hidden_states: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """What a pre-norm `nn.TransformerEncoderLayer` (dropout 0) computes, on its own parameters, with attention by
    `F.scaled_dot_product_attention`.

    Why not call the layer: in inference its fast path (`torch._transformer_encoder_layer_fwd`) given a key padding
    mask ran 3.5x slower on one CPU thread than this (1,090 against 308 ms for one 256-wide layer over 3,699 tokens,
    torch 2.13), and 1.8x slower without a mask; sdpa has a fused (flash) CPU kernel. The parameters, and so the
    saved adapters, are the stock layer's; `tests/test_selectors.py` checks the output against the stock layer's.
    hidden_states: (S, N, H); key_mask: (S, 1, 1, N) True at real tokens, or None.
    """
    attention = layer.self_attn
    segments, tokens, width = hidden_states.shape
    heads = attention.num_heads
    qkv = F.linear(layer.norm1(hidden_states), attention.in_proj_weight, attention.in_proj_bias)
    query, key, value = qkv.view(segments, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask)
    hidden_states = hidden_states + attention.out_proj(attended.transpose(1, 2).reshape(segments, tokens, width))
    return hidden_states + layer.linear2(layer.activation(layer.linear1(layer.norm2(hidden_states))))


class TransformerTokenScorer(TokenSelector):
    """Shared body of the Transformer-based learned selectors: `TokenTransformer` + a linear head.

    Subclasses set `default_num_layers` and `head_outputs` (logits per token), and may lower
    `max_default_hidden_size` (the width used when `scorer_hidden_size` is unset, capped by the input width).
    """

    trainable = True
    default_feature_source = "vision_features"
    default_num_layers: int
    head_outputs: int
    max_default_hidden_size: int = MAX_DEFAULT_HIDDEN_SIZE

    def __init__(self, config: TransformerScorerConfig, input_dim: int, llm_hidden_size: int) -> None:
        super().__init__(config, input_dim, llm_hidden_size)
        hidden_size, num_heads = scorer_sizes(config, input_dim, self.max_default_hidden_size)
        self.hidden_size = hidden_size
        self.encoder = TokenTransformer(
            input_dim, hidden_size, num_layers=config.scorer_num_layers or self.default_num_layers, num_heads=num_heads
        )
        self.head = nn.Linear(hidden_size, self.head_outputs)

    def resolved_config(self, config: TransformerScorerConfig) -> TransformerScorerConfig:
        """`config` with the width, depth and heads this scorer was built with, so that a saved adapter rebuilds at
        its own sizes even if a method's defaults change."""
        return dataclasses.replace(
            config,
            scorer_hidden_size=self.hidden_size,
            scorer_num_layers=len(self.encoder.layers),
            scorer_num_heads=self.encoder.layers[0].self_attn.num_heads,
        )


class AutoSelectScorer(TransformerTokenScorer):
    """L Transformer encoder blocks and a linear head giving one importance logit per visual token.

    Paper 002 Sec. 4.2 / paper 004 Eq. 3; inference is hard top-K on these logits (paper 002 Eq. 3). The
    z-score normalisation of paper 004 Eq. 4 belongs to the training-time Soft Top-K and, being monotonic,
    does not change the ranking, so `score` returns the raw logits.

    Sizes: `scorer_num_layers` defaults to 2 (paper 002 A, "two Transformer encoder blocks"); hidden size
    `scorer_hidden_size`, else `min(input_dim, 256)`; heads `scorer_num_heads`, else width // 128 (2 at 256).
    Paper 002 A uses 1024 and 16 heads (`scorer_hidden_size=1024, scorer_num_heads=16` builds its scorer). Why
    narrower by default: at 1024 the two blocks cost 0.6-2.2% of time to first token on one CPU thread at 7B
    widths (LLaVA-NeXT-7B's 2,928 tokens: 3.1 s of 142 s), over the project's 0.5% selection budget; at 256 they
    cost 0.4 s there in float32 (docs/benchmarks.md). Why 2 heads: in bfloat16 on a CPU with AMX, 4 heads of 64
    cost 71 ms of LLaVA-NeXT-7B's 13.3 s (0.54%); the attention is most of it, and the kernel runs faster per FLOP
    at head dim 128 (see `DEFAULT_HEAD_DIM`): 2 heads of 128 cost 50 ms (0.41%). No published result measures the
    narrower scorer's accuracy.

    Attributes:
        encoder: the `TokenTransformer`.
        head: `hidden_size -> 1` logit.
    """

    default_num_layers = 2
    head_outputs = 1
    # One method written up twice: DiffPrune, then AutoSelect.
    papers = (
        "Beyond Surrogate Gradients: Fully Differentiable Token Pruning for Vision-Language Models",
        "The Model Knows Which Tokens Matter: Automatic Token Selection via Noise Gating",
    )

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> scores: (N,) logits."""
        return self.head(self.encoder(features)).squeeze(-1)

    def score_padded(self, features: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """features: (S, N, input_dim) padded segments, token_mask: (S, N) -> scores (S, N) logits."""
        return self.head(self.encoder.forward_padded(features, token_mask)).squeeze(-1)


register_selector("autoselect", AutoSelectConfig, AutoSelectScorer)
