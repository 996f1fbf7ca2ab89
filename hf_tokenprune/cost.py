"""Cost model of a language-model prefill: FLOPs (paper 001, Sec. 5.3) and KV-cache bytes.

Formulas only, no measurement: `hf-tokenprune bench` compares its timings against them, and they need
nothing but a config's widths. Only ratios of the FLOPs count are meaningful (see `prefill_flops`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig


def prefill_flops(num_tokens: int, hidden_size: int, intermediate_size: int, num_layers: int) -> int:
    """Language-model prefill FLOPs of paper 001, Sec. 5.3: (4 n d^2 + 2 n^2 d + 2 n d m) l.

    n tokens, hidden size d, FFN intermediate size m, l layers. 4nd^2 is the Q/K/V/O projections, 2n^2d the
    attention scores and weighted sum, 2ndm the FFN; every term counts one multiply-add as one FLOP, as the
    paper (after FastV) does, so only ratios of this number are meaningful. The paper applies it to the
    visual tokens alone; the benchmark applies it to the whole prefill sequence (text + kept visual tokens),
    since text tokens are prefilled too.

    Returns: FLOPs (multiply-adds) of the whole stack, an int.
    """
    n, d, m = num_tokens, hidden_size, intermediate_size
    return (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) * num_layers


def pruned_prefill_flops(
    full_tokens: int,
    kept_tokens: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    unpruned_layers: int = 0,
) -> int:
    """`prefill_flops` of a pruned prefill: `unpruned_layers` layers run all `full_tokens` (an in-LLM method such as
    fastv drops only after layer K = `unpruned_layers`), the other layers the `kept_tokens`."""
    return prefill_flops(full_tokens, hidden_size, intermediate_size, unpruned_layers) + prefill_flops(
        kept_tokens, hidden_size, intermediate_size, num_layers - unpruned_layers
    )


def ideal_prefill_ratio(
    text_tokens: int, visual_tokens: int, kept_tokens: int, config: PretrainedConfig, unpruned_layers: int = 0
) -> float:
    """FLOPs(unpruned prefill) / FLOPs(pruned prefill): the speed-up pruning cannot beat.

    Token counts are of one sample's prompt; widths and depth come from `config.get_text_config()`.
    `unpruned_layers`: layers that still see every token (FastV's K; 0 when pruning happens before the language model).
    Returns a dimensionless ratio >= 1 when `kept_tokens <= visual_tokens`.
    """
    return ideal_batch_prefill_ratio([text_tokens], [visual_tokens], [kept_tokens], config, unpruned_layers)


def ideal_batch_prefill_ratio(
    text_tokens: list[int],
    visual_tokens: list[int],
    kept_tokens: list[int],
    config: PretrainedConfig,
    unpruned_layers: int = 0,
) -> float:
    """`ideal_prefill_ratio` of a batch: summed FLOPs of every sample's unpruned prefill over the pruned ones.

    Lists hold one count per sample (padding excluded: it is not work the model must do). One sample gives
    `ideal_prefill_ratio`; `unpruned_layers` as there.
    """
    text = config.get_text_config()
    widths = (text.hidden_size, text.intermediate_size, text.num_hidden_layers)
    unpruned = sum(prefill_flops(t + v, *widths) for t, v in zip(text_tokens, visual_tokens, strict=True))
    pruned = sum(
        pruned_prefill_flops(t + v, t + k, *widths, unpruned_layers)
        for t, v, k in zip(text_tokens, visual_tokens, kept_tokens, strict=True)
    )
    return unpruned / pruned


def predicted_kv_cache_bytes(
    config: PretrainedConfig,
    sequence_tokens: int,
    dtype: torch.dtype,
    full_tokens: int | None = None,
    unpruned_layers: int = 0,
) -> int:
    """2 (keys, values) x KV heads x head dim x bytes per element x (tokens held, summed over layers).

    sequence_tokens: tokens held in the cache of one sample (text + kept visual tokens). With an in-LLM method
    (fastv), the first `unpruned_layers` layers (K) hold `full_tokens` (text + every visual token) and only the others
    hold `sequence_tokens`. Returns bytes for a batch of one, every layer of `config.get_text_config()` included.
    """
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = text.num_key_value_heads or text.num_attention_heads
    bytes_per_element = torch.empty((), dtype=dtype).element_size()
    held = (text.num_hidden_layers - unpruned_layers) * sequence_tokens + unpruned_layers * (full_tokens or 0)
    return 2 * kv_heads * head_dim * held * bytes_per_element


def cache_bytes(cache: Any) -> tuple[int, int]:
    """Measured: (bytes of every key and value tensor, sequence length of layer 0) of a `transformers` cache."""
    return sum(cache_layer_bytes(cache)), _cache_pairs(cache)[0][0].shape[-2]


def cache_layer_bytes(cache: Any) -> list[int]:
    """Measured: bytes of the keys and values of each layer of a `transformers` cache (layers differ with fastv)."""
    return [sum(t.numel() * t.element_size() for t in pair if t is not None) for pair in _cache_pairs(cache)]


def _cache_pairs(cache: Any) -> list[tuple]:
    layers = getattr(cache, "layers", None)
    return [(layer.keys, layer.values) for layer in layers] if layers is not None else list(cache)
