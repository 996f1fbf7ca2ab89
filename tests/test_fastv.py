"""The inference contract for `fastv`, the in-LLM method, on every architecture.

Oracles: the stock base model's own attention weights (`output_attentions` under eager) for the ranking; the stock
base model with the dropped tokens masked out as keys of the decoder layers from K on only (forward hooks on the
base's layers, nothing of ours) for the logits and for generation; one-by-one runs for batches.
"""

from __future__ import annotations

import pytest
import torch
from test_contract import (
    NEW_TOKENS,
    RecordingStreamer,
    VisionCallCounter,
    batch_inputs,
    check_batch_equals_one_by_one,
    expected_kept,
    image_runs,
    kept_per_run,
)

from hf_tokenprune import AutoBudget, TokenPruneConfig, get_pruned_model, training_free_selectors
from hf_tokenprune.modeling.selection_ops import auto_keep_count, hard_topk_indices, tokens_to_keep
from hf_tokenprune.testing import BUILDERS, IMAGE_ID, IMAGE_SIZES, build_inputs, make_samples, tiny_gemma3

ARCHS = list(BUILDERS)
LAYER = 1  # the tiny language models have 2 decoder layers: layer 0 sees every token, layer 1 the kept ones


def fastv(base, **config_kwargs):
    return get_pruned_model(base, TokenPruneConfig(method="fastv", layer=LAYER, **config_kwargs))


class MaskedFromLayer:
    """The oracle: while active, decoder layers >= `layer` of the stock `base` see the first `keep.shape[1]` positions
    (the prompt) only where `keep` (B, P) is True; layers before it see everything. Works on the stock masks (bool,
    additive float, or None for plain causal attention) of prefill and decoding steps alike."""

    def __init__(self, base, keep: torch.Tensor, layer: int = LAYER):
        self.layers = base.get_decoder().layers[layer:]
        self.keep = keep.bool()
        self.handles = []

    def hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values")
        query = hidden.shape[1]
        if mask is None:  # plain causal over the cache plus this step
            past = cache.get_seq_length(module.self_attn.layer_idx) if cache is not None else 0
            keys = torch.arange(past + query, device=hidden.device)
            mask = (keys[None, :] <= (torch.arange(query, device=hidden.device) + past)[:, None])[None, None].expand(
                hidden.shape[0], 1, -1, -1
            )
        prompt = self.keep.shape[1]
        dropped = torch.zeros(hidden.shape[0], mask.shape[-1], dtype=torch.bool, device=hidden.device)
        dropped[:, : min(prompt, mask.shape[-1])] = ~self.keep[:, : mask.shape[-1]]
        dropped = dropped[:, None, None, :]
        if mask.dtype == torch.bool:
            mask = mask & ~dropped
        else:
            mask = mask.masked_fill(dropped, torch.finfo(mask.dtype).min)
        kwargs["attention_mask"] = mask
        return args, kwargs

    def __enter__(self):
        self.handles = [layer.register_forward_pre_hook(self.hook, with_kwargs=True) for layer in self.layers]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def attention_row(eager_base, inputs: dict, layer: int = LAYER) -> torch.Tensor:
    """(B, L): the last token's attention in decoder layer `layer` - 1, averaged over heads, from an eager base."""
    with torch.no_grad():
        out = eager_base(**inputs, output_attentions=True)
    return out.attentions[layer - 1][:, :, -1].float().mean(1)


def expected_keep(eager_base, arch: str, inputs: dict, budget) -> torch.Tensor:
    """The keep mask FastV's rule gives: per image, the top of the eager base's attention row (or the auto count)."""
    row = attention_row(eager_base, inputs)
    input_ids = inputs["input_ids"]
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    for batch_row in range(input_ids.shape[0]):
        runs = image_runs(arch, input_ids[batch_row : batch_row + 1])
        positions = torch.nonzero(input_ids[batch_row] == IMAGE_ID).flatten()
        offset = 0
        for run in runs:
            run_positions = positions[offset : offset + run]
            scores = row[batch_row, run_positions]
            if isinstance(budget, AutoBudget):
                count = auto_keep_count(
                    scores,
                    budget.threshold,
                    tokens_to_keep(budget.min_fraction, run),
                    tokens_to_keep(budget.max_fraction, run),
                )
            else:
                count = tokens_to_keep(budget, run)
            kept = hard_topk_indices(scores, count)
            dropped = torch.ones(run, dtype=torch.bool, device=input_ids.device)
            dropped[kept] = False
            keep[batch_row, run_positions[dropped]] = False
            offset += run
    return keep


def test_fastv_is_a_training_free_method():
    assert "fastv" in training_free_selectors()


# ---------------------------------------------------------------- identity and the ranking rule
@pytest.mark.parametrize("arch", ARCHS)
def test_fastv_keeping_everything_is_the_base_model(base_models, arch):
    base = base_models(arch)
    model = fastv(base)
    inputs = batch_inputs(arch)
    with torch.no_grad():
        reference = base(**inputs).logits
        for budget in (None, 1.0):
            out = model(**inputs, prune_budget=budget)
            assert out.keep_mask.all()
            torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("budget", [0.3, 2, AutoBudget(threshold=0.5, min_fraction=0.1, max_fraction=0.9)])
def test_fastv_keeps_each_images_most_attended_tokens(base_models, arch, attn, budget):
    """Under sdpa the row is computed from the layer's query and keys; it must rank as eager's weights do."""
    model = fastv(base_models(arch, attn))
    inputs = batch_inputs(arch)
    with torch.no_grad():
        out = model(**inputs, prune_budget=budget)
    assert torch.equal(out.keep_mask, expected_keep(base_models(arch), arch, inputs, budget))
    if not isinstance(budget, AutoBudget):
        input_ids = inputs["input_ids"]
        assert kept_per_run(arch, input_ids, out.keep_mask) == expected_kept(arch, input_ids, budget)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava"])
def test_fastv_sample_scope_ranks_all_images_of_a_sample_together(base_models, arch):
    model = fastv(base_models(arch))
    inputs = batch_inputs(arch)
    with torch.no_grad():
        out = model(**inputs, prune_budget=0.3, prune_budget_scope="sample")
    row = attention_row(base_models(arch), inputs)
    for batch_row in range(inputs["input_ids"].shape[0]):
        positions = torch.nonzero(inputs["input_ids"][batch_row] == IMAGE_ID).flatten()
        if positions.numel() == 0:
            continue
        kept = hard_topk_indices(row[batch_row, positions], tokens_to_keep(0.3, positions.numel()))
        assert torch.equal(torch.nonzero(out.keep_mask[batch_row, positions]).flatten(), kept)


# ---------------------------------------------------------------- drop equals mask, from layer K on
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fastv_drop_equals_mask_from_its_layer(base_models, arch, attn):
    base = base_models(arch, attn)
    check_drop_equals_mask(fastv(base), base, batch_inputs(arch), 0.3)


def check_drop_equals_mask(model, base, inputs: dict, budget) -> torch.Tensor:
    """Logits of the pruned forward equal the base model's with the dropped tokens masked from layer K on, differ from
    the unmasked base's, and are zero at dropped tokens; returns the keep mask."""
    with torch.no_grad():
        out = model(**inputs, prune_budget=budget)
        with MaskedFromLayer(base, out.keep_mask):
            reference = base(**inputs).logits
        unmasked = base(**inputs).logits
    assert not out.keep_mask.all()
    compared = out.keep_mask & inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[compared], reference[compared], atol=1e-4, rtol=0)
    assert not torch.allclose(out.logits[compared], unmasked[compared], atol=1e-4), "the oracle must see the drop"
    assert (out.logits[~out.keep_mask] == 0).all()
    return out.keep_mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fastv_generate_equals_the_masked_base_model(base_models, arch, attn):
    base = base_models(arch, attn)
    model = fastv(base)
    inputs = batch_inputs(arch)
    out = model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    with MaskedFromLayer(base, out.keep_mask):
        reference = base.generate(**inputs, max_new_tokens=NEW_TOKENS, output_logits=True, return_dict_in_generate=True)
    length = inputs["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :length], inputs["input_ids"])
    assert torch.equal(out.sequences[:, length:], reference.sequences[:, length:])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["beam", "sampling", "no_cache", "static_cache", "scores", "streamer"])
def test_fastv_generation_modes(base_models, arch, mode):
    base = base_models(arch)
    model = fastv(base)
    inputs = batch_inputs(arch)
    length = inputs["input_ids"].shape[1]
    expected = model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)

    def run(**kwargs):
        return model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, **kwargs)

    if mode in ("beam", "sampling"):
        settings = dict(num_beams=3) if mode == "beam" else dict(do_sample=True, top_k=0)
        torch.manual_seed(0)
        got = run(num_return_sequences=2, **settings)
        torch.manual_seed(0)
        with MaskedFromLayer(base, expected.keep_mask.repeat_interleave(2 if mode == "sampling" else 3, dim=0)):
            reference = base.generate(**inputs, max_new_tokens=NEW_TOKENS, num_return_sequences=2, **settings)
        assert torch.equal(got[:, length:], reference[:, length:])
    elif mode == "no_cache":
        assert torch.equal(run(use_cache=False), expected.sequences)
    elif mode == "static_cache":
        assert torch.equal(run(cache_implementation="static"), expected.sequences)
    elif mode == "scores":
        out = run(return_dict_in_generate=True, output_scores=True)
        assert torch.equal(out.sequences, expected.sequences) and len(out.scores) == NEW_TOKENS
        with torch.no_grad():
            prefill = model(**inputs, prune_budget=0.3).logits[:, -1]
        torch.testing.assert_close(out.scores[0], prefill, atol=1e-5, rtol=0)
    elif mode == "streamer":  # one sample, as stock streamers take
        single = build_inputs(arch, make_samples([1], IMAGE_SIZES[arch]))
        streamer = RecordingStreamer()
        sequences = model.generate(**single, prune_budget=0.3, max_new_tokens=NEW_TOKENS, streamer=streamer)
        assert torch.equal(streamer.puts[0], single["input_ids"].cpu())
        assert torch.equal(torch.cat(streamer.puts[1:]), sequences[0, single["input_ids"].shape[1] :].cpu())


# ---------------------------------------------------------------- batches
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fastv_batch_equals_one_by_one(base_models, arch, attn):
    check_batch_equals_one_by_one(fastv(base_models(arch, attn)), arch)


# ---------------------------------------------------------------- KV cache
@pytest.mark.parametrize("arch", ARCHS)
def test_fastv_cache_layers_from_k_hold_only_kept_tokens(base_models, arch):
    model = fastv(base_models(arch))
    inputs = batch_inputs(arch)
    out = model.generate(**inputs, prune_budget=0.25, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    length = inputs["input_ids"].shape[1]
    kept = int((out.keep_mask & inputs["attention_mask"].bool()).sum(-1).max())
    assert kept < length
    cached = [layer.keys.shape[-2] for layer in out.past_key_values.layers]
    assert cached[:LAYER] == [length + NEW_TOKENS - 1] * LAYER  # layers before K hold every token
    assert cached[LAYER:] == [kept + NEW_TOKENS - 1] * (len(cached) - LAYER)


def test_fastv_on_sliding_window_layers_equals_the_masked_base_model():
    """Gemma 3 with a window shorter than the prompt, sliding layers on both sides of K: the compacted layers keep
    the stock window, measured at original positions, while decoding past the window."""
    base = tiny_gemma3(sliding_window=6, layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    model = get_pruned_model(base, TokenPruneConfig(method="fastv", layer=1))
    inputs = batch_inputs("gemma3")
    check_drop_equals_mask(model, base, inputs, 0.3)
    generated = model.generate(**inputs, prune_budget=0.3, max_new_tokens=8, return_dict_in_generate=True)
    with MaskedFromLayer(base, generated.keep_mask):
        expected = base.generate(**inputs, max_new_tokens=8)
    assert torch.equal(generated.sequences, expected)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("entry", ["forward", "generate"])
def test_fastv_layer_past_the_language_model_fails_before_compute(base_models, entry):
    base = base_models("qwen2_5_vl")
    inputs = batch_inputs("qwen2_5_vl")
    for model, kwargs in (
        (get_pruned_model(base, TokenPruneConfig(method="fastv", layer=2)), {}),
        # fastv for one call: the default K = 2 on a 2-layer language model
        (get_pruned_model(base, TokenPruneConfig(method="divprune")), {"prune_method": "fastv"}),
    ):
        counter = VisionCallCounter(model)
        with pytest.raises(ValueError, match=r"`layer`.*2 decoder layers.*\[1, 1\]"):
            getattr(model, entry)(**inputs, prune_budget=0.3, **kwargs)
        assert counter.calls == 0
        counter.handle.remove()
    with pytest.raises(ValueError, match="`layer` must be an int >= 1"):
        TokenPruneConfig(method="fastv", layer=0)


def test_fastv_refuses_labels_and_assisted_decoding_before_compute(base_models):
    base = base_models("llava")
    model = fastv(base)
    inputs = batch_inputs("llava")
    counter = VisionCallCounter(model)
    with pytest.raises(ValueError, match="`labels` cannot be combined with an in-LLM"):
        model(**inputs, labels=inputs["input_ids"], prune_budget=0.3)
    single = build_inputs("llava", make_samples([1], IMAGE_SIZES["llava"]))
    for kwargs in ({"assistant_model": base}, {"prompt_lookup_num_tokens": 2}):
        with pytest.raises(ValueError, match=f"`{next(iter(kwargs))}` .*in-LLM"):
            model.generate(**single, prune_budget=0.3, max_new_tokens=2, **kwargs)
    assert counter.calls == 0
    counter.handle.remove()


def test_fastv_prunes_qwen_video_frames_like_images(base_models):
    """Each temporal frame group is its own budget unit; drop equals mask from layer K on."""
    from hf_tokenprune.testing import VIDEO_ID, make_video_inputs

    base = base_models("qwen2_5_vl")
    model = fastv(base)
    inputs = make_video_inputs(frames=4, height=4, width=6)
    frames = int(inputs["video_grid_thw"][0, 0])
    keep_mask = check_drop_equals_mask(model, base, inputs, 0.34)
    input_ids = inputs["input_ids"]
    assert (input_ids == VIDEO_ID).any()
    assert kept_per_run("qwen2_5_vl", input_ids, keep_mask, frames) == expected_kept(
        "qwen2_5_vl", input_ids, 0.34, frames
    )
