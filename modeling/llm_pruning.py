"""Dropping tokens inside the language model (FastV): layers 0..K-1 see every token, layers K.. only the kept ones.

`InLLMTokenDrop` is a context manager around one `forward` or one whole `generate` of a stock model. It hooks the
stock decoder instead of forking it, so every architecture whose text model runs `layers[i](hidden_states,
attention_mask=..., position_embeddings=..., position_ids=..., past_key_values=...)` works unchanged:

- layer K-1's self-attention gives the attention row of the last prompt token. Under `eager` the layer returns its
  attention weights; under any other implementation (`sdpa`, flash) the weights are not computed, so the row is
  computed here from the query and keys the layer passes to its attention function (already normed and rotated,
  M-RoPE included) and the layer's own mask;
- `decide(row)` turns the row into the prompt positions to keep (the selector's budget rules);
- forward pre-hooks on layers K.. gather the hidden states, position embeddings and ids of the kept positions
  (rows of a batch keep different counts: the compact sequence is left-padded) and give each layer the stock
  mask's entries at those positions, so causality, padding, sliding windows and bidirectional image blocks stay
  exactly the stock model's, measured at original positions. Their KV-cache layers then hold only kept tokens.

The stock code builds each forward's masks once, from one cache layer per attention type; `mask_sizes` answers
it for the compacted layers as if they held every token (a shadow layer per compacted layer tracks that length),
so the stock masks stay in original positions and are gathered here.

Written by hand: neither transformers nor torch drops tokens between decoder layers. Imports only torch,
transformers and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .selection_ops import left_padded_compaction


def _gather_sequence(values: torch.Tensor, index: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """values (..., B, L, ...) with the batch dim just before `seq_dim` (negative) -> (..., B, Lc, ...) at index (B, Lc)."""
    batch_dim = seq_dim - 1
    shape = list(values.shape)
    shape[batch_dim] = index.shape[0]
    values = values.expand(shape)
    view = [1] * values.ndim
    view[batch_dim], view[seq_dim] = index.shape
    expanded = list(values.shape)
    expanded[seq_dim] = index.shape[1]
    return values.gather(values.ndim + seq_dim, index.reshape(view).expand(expanded))


def last_token_attention(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float, softcap: float | None = None
) -> torch.Tensor:
    """Attention of the last query over all keys, averaged over heads, as eager attention computes it.

    query (B, H, q, D), key (B, H_kv, kv, D) (grouped-query heads repeated), mask (B, 1, q, kv) bool (True attends)
    or additive float, or None -> (B, kv) float32.
    """
    heads = query.shape[1]
    key = key.repeat_interleave(heads // key.shape[1], dim=1)
    logits = torch.einsum("bhd,bhkd->bhk", query[:, :, -1].float(), key.float()) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if mask is not None:
        row = mask[:, :, -1, : key.shape[2]]
        logits = logits.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else logits + row.float()
    return logits.softmax(-1).mean(1)


class InLLMTokenDrop:
    """Drops prompt tokens for decoder layers >= `layer` of `model`'s language model, while active.

    decide: (B, P) attention row of the last prompt token (layer `layer` - 1) -> (B, P) bool, True where a prompt
        position continues past layer `layer` - 1. Called once, at the prefill (the first forward).
    prompt_length: P, the prompt's length; the first forward must run the whole prompt on an empty cache. Later
        forwards either continue from the cache (decoding) or rerun prompt plus new tokens (`use_cache=False`); the
        prompt keeps the prefill's choice, new tokens are never dropped.

    After the first forward: `keep` (B, P) bool, and `compact_source` (B, Pc) / `compact_valid` (B, Pc), the prompt
    positions of the compacted prompt (left-padded; padding slots are not valid).
    """

    def __init__(self, model, layer: int, decide: Callable[[torch.Tensor], torch.Tensor], prompt_length: int) -> None:
        self.text_model = model.get_decoder()
        self.layers = self.text_model.layers
        self.layer = layer
        self.decide = decide
        self.prompt_length = prompt_length
        self.keep: torch.Tensor | None = None
        self.compact_source: torch.Tensor | None = None
        self.compact_valid: torch.Tensor | None = None
        self._row: torch.Tensor | None = None
        self._step: dict[str, Any] = {}
        self._handles: list = []
        self._patched_caches: list = []
        self._restore_interface: Callable[[], None] | None = None
        attention = getattr(self.layers[layer - 1], "self_attn", None)
        if attention is None:
            raise TypeError(
                f"{type(self.layers[layer - 1]).__name__} has no `self_attn`: fastv cannot read its attention"
            )
        self.attention = attention

    # ----------------------------------------------------------------- context
    def __enter__(self) -> InLLMTokenDrop:
        self._handles.append(self.text_model.register_forward_pre_hook(self._start_forward, with_kwargs=True))
        self._handles.append(self.text_model.register_forward_hook(self._end_forward, with_kwargs=True))
        if self.attention.config._attn_implementation == "eager":
            self._handles.append(self.attention.register_forward_hook(self._read_eager_weights))
        else:
            self._handles.append(self.attention.register_forward_pre_hook(self._wrap_attention_function))
            self._handles.append(self.attention.register_forward_hook(self._unwrap_attention_function))
        for index in range(self.layer, len(self.layers)):
            hook = self._compact_layer_inputs(index)
            self._handles.append(self.layers[index].register_forward_pre_hook(hook, with_kwargs=True))
        if hasattr(self.text_model, "_deepstack_process"):  # Qwen3-VL adds visual features after early layers
            self.text_model._deepstack_process = self._deepstack_process
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._restore_interface is not None:
            self._restore_interface()
        self.text_model.__dict__.pop("_deepstack_process", None)
        for cache in self._patched_caches:
            for name in ("get_mask_sizes", "get_query_offset", "_token_drop_shadows"):
                cache.__dict__.pop(name, None)
        self._patched_caches.clear()

    # ----------------------------------------------------------------- per forward
    def _start_forward(self, module, args, kwargs) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = kwargs.get("input_ids", args[0] if args else None)
        query_length = embeds.shape[1]
        cache = kwargs.get("past_key_values")
        if cache is not None and not kwargs.get("use_cache", True):
            cache = None
        past = cache.get_seq_length() if cache is not None else 0
        prompt = self.prompt_length
        if self.keep is None and (past != 0 or query_length != prompt):
            raise ValueError(
                f"fastv decides at the prefill: the first forward must run the whole prompt ({prompt} tokens) on an "
                f"empty cache, got {query_length} tokens after {past} cached"
            )
        if 0 < past < prompt:
            raise ValueError(
                "fastv cannot continue from a cache that holds part of the prompt (chunked prefill, assisted "
                "decoding): its layers past the pruning layer hold only the kept tokens"
            )
        self._step = {"past": past, "query_length": query_length, "cache": cache, "masks": {}}
        if cache is not None:
            self._patch_cache(cache)
            # What the stock masks of this forward cover, per compacted layer, in original positions.
            self._step["stock_sizes"] = {
                index: cache._token_drop_shadows[index].get_mask_sizes(query_length)
                for index in range(self.layer, len(self.layers))
            }

    def _end_forward(self, module, args, kwargs, output) -> None:
        cache = self._step.get("cache")
        if cache is not None:  # the shadows grow as uncompacted layers do: one (B, 1, q, 1) dummy key/value each
            batch, device = self.compact_source.shape[0], self.compact_source.device
            states = torch.zeros(batch, 1, self._step["query_length"], 1, device=device)
            for shadow in cache._token_drop_shadows.values():
                shadow.update(states, states)
        self._step = {}

    def _patch_cache(self, cache) -> None:
        """Give the stock mask builders original-position sizes for the compacted layers (see the module docstring)."""
        if "_token_drop_shadows" in cache.__dict__:
            return
        if cache.get_seq_length() != 0:
            raise ValueError("fastv needs an empty cache at the prefill")
        # Layers a cache creates on first use are `layer_class_to_replicate` ones.
        cache._token_drop_shadows = {
            index: copy.deepcopy(cache.layers[index]) if index < len(cache.layers) else cache.layer_class_to_replicate()
            for index in range(self.layer, len(self.layers))
        }
        stock_mask_sizes, stock_query_offset = cache.get_mask_sizes, cache.get_query_offset

        def get_mask_sizes(query_length, layer_idx=0):
            shadow = cache._token_drop_shadows.get(layer_idx)
            return (
                shadow.get_mask_sizes(query_length) if shadow is not None else stock_mask_sizes(query_length, layer_idx)
            )

        def get_query_offset(layer_idx=0):
            shadow = cache._token_drop_shadows.get(layer_idx)
            return shadow.get_seq_length() if shadow is not None else stock_query_offset(layer_idx)

        cache.get_mask_sizes, cache.get_query_offset = get_mask_sizes, get_query_offset
        self._patched_caches.append(cache)

    # ----------------------------------------------------------------- the attention row of layer K-1
    def _read_eager_weights(self, module, args, output) -> None:
        if self.keep is None and self._row is None:
            self._row = output[1][:, :, -1].float().mean(1)

    def _wrap_attention_function(self, module, args) -> None:
        if self.keep is not None or self._row is not None:
            return
        implementation = module.config._attn_implementation
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        had_local, previous = implementation in local, local.get(implementation)
        original = ALL_ATTENTION_FUNCTIONS[implementation]

        def attention_function(attn_module, query, key, value, attention_mask, *rest, **kwargs):
            if attn_module is module and self._row is None:
                scaling = kwargs.get("scaling")
                scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
                self._row = last_token_attention(query, key, attention_mask, scaling, kwargs.get("softcap"))
            return original(attn_module, query, key, value, attention_mask, *rest, **kwargs)

        def restore() -> None:
            if had_local:
                local[implementation] = previous
            else:
                local.pop(implementation, None)
            self._restore_interface = None

        ALL_ATTENTION_FUNCTIONS[implementation] = attention_function
        self._restore_interface = restore

    def _unwrap_attention_function(self, module, args, output) -> None:
        if self._restore_interface is not None:
            self._restore_interface()

    # ----------------------------------------------------------------- compaction
    def _decide(self) -> None:
        if self._row is None:
            raise RuntimeError("fastv: the attention row of the pruning layer was not captured")
        keep = self.decide(self._row).bool()
        self._row = None
        self.compact_source, self.compact_valid = left_padded_compaction(keep)
        self.keep = keep

    def original_positions(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compact cache slots (n,) of the compacted layers -> their (B, n) original positions and validity."""
        compact_prompt = self.compact_source.shape[1]
        in_prompt = slots < compact_prompt
        prompt_slot = slots.clamp(max=compact_prompt - 1)
        positions = torch.where(
            in_prompt[None, :],
            self.compact_source[:, prompt_slot],
            (slots + self.prompt_length - compact_prompt)[None, :],
        )
        valid = torch.where(in_prompt[None, :], self.compact_valid[:, prompt_slot], torch.ones_like(in_prompt)[None, :])
        return positions, valid

    def _queries(self) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This forward's compacted queries: (index into its queries (B, q_c) or None when none drop, their original
        positions (B, q_c), validity (B, q_c), and compact cache slots (q_c,))."""
        step = self._step
        if "queries" not in step:
            past, query_length = step["past"], step["query_length"]
            batch, compact_prompt = self.compact_source.shape
            if past == 0:  # the forward holds the prompt: its kept positions, then every new token
                slots = torch.arange(compact_prompt + query_length - self.prompt_length, device=self.keep.device)
                positions, valid = self.original_positions(slots)
                step["queries"] = (positions, positions, valid, slots)
            else:
                slots = torch.arange(query_length, device=self.keep.device) + past - self.prompt_length + compact_prompt
                positions = (torch.arange(query_length, device=self.keep.device) + past).expand(batch, -1)
                step["queries"] = (None, positions, torch.ones_like(positions, dtype=torch.bool), slots)
        return step["queries"]

    def _compact_layer_inputs(self, index: int):
        def hook(module, args, kwargs):
            if self.keep is None:
                self._decide()
            gather, positions, valid, slots = self._queries()
            if gather is not None:
                if index == self.layer:  # the first compacted layer takes the kept positions' hidden states
                    hidden = args[0] if args else kwargs["hidden_states"]
                    hidden = _gather_sequence(hidden, gather, -2) * valid[..., None].to(hidden.dtype)
                    if args:
                        args = (hidden, *args[1:])
                    else:
                        kwargs["hidden_states"] = hidden
                    self._step["compacted"] = True
                embeddings = kwargs.get("position_embeddings")
                if embeddings is not None:
                    kwargs["position_embeddings"] = self._memo(
                        ("rope", id(embeddings[0])),
                        lambda: tuple(_gather_sequence(values, gather, -2) for values in embeddings),
                    )
                if kwargs.get("position_ids") is not None:
                    ids = kwargs["position_ids"]
                    kwargs["position_ids"] = self._memo(("ids", id(ids)), lambda: _gather_sequence(ids, gather, -1))
            mask = kwargs.get("attention_mask")
            kwargs["attention_mask"] = self._compact_mask(mask, index, positions, valid, slots)
            return args, kwargs

        return hook

    def _memo(self, key, build):
        masks = self._step["masks"]
        if key not in masks:
            masks[key] = build()
        return masks[key]

    def _compact_mask(self, mask, index, query_positions, query_valid, query_slots):
        """The stock mask of layer `index` (original positions) at this layer's compacted queries and cache slots."""
        cache = self._step["cache"]
        query_length = query_slots.shape[0]
        if cache is not None:
            # The layer's own (compacted) sizes, read past the patch.
            layers = cache.layers
            kv_length, kv_offset = (
                layers[index].get_mask_sizes(query_length) if index < len(layers) else (query_length, 0)
            )
            stock_length, stock_offset = self._step["stock_sizes"][index]
        else:
            kv_length, kv_offset = query_length, 0
            stock_length, stock_offset = self._step["query_length"], 0
        key = ("mask", id(mask), kv_length, kv_offset, stock_length, stock_offset)

        def build():
            slots = torch.arange(kv_length, device=query_positions.device) + kv_offset
            key_positions, key_valid = self.original_positions(slots)
            columns = key_positions - stock_offset
            key_valid = key_valid & (columns >= 0) & (columns < stock_length)
            columns = columns.clamp(0, stock_length - 1)
            if mask is None:  # the stock attention is plain causal over every cached token
                if bool(key_valid.all()) and bool(query_valid.all()):
                    return None
                visible = key_positions[:, None, :] <= query_positions[:, :, None]
                return (visible & key_valid[:, None, :])[:, None]
            if mask.ndim == 2:  # flash attention: a (B, kv) padding mask
                return mask.gather(1, columns) * key_valid.to(mask.dtype)
            rows = (query_positions - self._step["past"]).clamp(0, mask.shape[2] - 1)
            compact = mask.expand(rows.shape[0], *mask.shape[1:])
            compact = compact.gather(2, rows[:, None, :, None].expand(-1, compact.shape[1], -1, compact.shape[3]))
            compact = compact.gather(3, columns[:, None, None, :].expand(-1, compact.shape[1], compact.shape[2], -1))
            if compact.dtype == torch.bool:
                return compact & key_valid[:, None, None, :]
            return compact.masked_fill(~key_valid[:, None, None, :], torch.finfo(compact.dtype).min)

        return self._memo(key, build)

    # ----------------------------------------------------------------- Qwen3-VL DeepStack
    def _deepstack_process(self, hidden_states, visual_pos_masks, visual_embeds):
        stock = type(self.text_model)._deepstack_process.__get__(self.text_model)
        if not self._step.get("compacted"):
            return stock(hidden_states, visual_pos_masks, visual_embeds)
        gather, _, valid, _ = self._queries()
        visual_pos_masks = visual_pos_masks.to(gather.device)
        kept = torch.ones_like(visual_pos_masks)
        kept[:, : self.prompt_length] = self.keep
        compact_masks = visual_pos_masks.gather(1, gather) & valid
        return stock(hidden_states, compact_masks, visual_embeds[kept[visual_pos_masks].to(visual_embeds.device)])
