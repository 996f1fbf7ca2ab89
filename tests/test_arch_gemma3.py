"""Gemma 3 specifics: bidirectional image blocks, sliding-window layers, scaled embeddings, pan-and-scan crops.

Oracles: the stock model fed the full sequence with dropped tokens masked out (with and without the image blocks'
bidirectional part), the stock model fed a mask built by hand in the caller's layout, greedy decoding of the stock
model step by step, the stock embedding module, and the stock processor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.testing import (
    GEMMA3_TOKENS_PER_IMAGE,
    IMAGE_ID,
    IMAGE_SIZES,
    TINY_ARCHITECTURES,
    build_inputs,
    make_samples,
    tiny_gemma3,
    tiny_processor,
)

NEW_TOKENS = 4
WINDOW = 4  # far smaller than the prompts (about 100 tokens), so the windowed layer truncates


def batch() -> dict:
    """Samples with 2 (one of them with 2 pan-and-scan crops), 0 and 1 images, left-padded."""
    return build_inputs("gemma3", make_samples([2, 0, 1], IMAGE_SIZES["gemma3"]))


def unpruned_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def masked(inputs: dict, keep_mask: torch.Tensor, token_types: bool = True) -> dict:
    """Contract line 3's oracle input; without `token_types` the stock mask is causal only (no image blocks)."""
    result = dict(inputs, attention_mask=inputs["attention_mask"] * keep_mask.long())
    result["position_ids"] = unpruned_positions(inputs["attention_mask"])
    if not token_types:
        result.pop("token_type_ids")
    return result


def kept_window_masks(inputs: dict, keep_mask: torch.Tensor, window: int, dtype: torch.dtype) -> dict:
    """The stock Gemma 3 mask rules written out in the caller's layout, the window counted over kept tokens.

    Full layers: (causal or same image block) and kept key. Sliding layers: that, and fewer than `window` kept
    tokens from key to query looking back (the stock window bounds look-back only). Additive (B, 1, L, L) masks.
    """
    kept = keep_mask & inputs["attention_mask"].bool()
    length = kept.shape[1]
    is_image = inputs["token_type_ids"] == 1
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:, :-1]
    block = torch.where(is_image, starts.cumsum(-1), -1)
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None]
    same_block = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0)
    full = (causal | same_block) & kept[:, None, :]
    rank = kept.long().cumsum(-1)  # kept tokens up to and including each position
    look_back = rank[:, :, None] - rank[:, None, :] < window
    sliding = full & look_back
    lowest = torch.finfo(dtype).min

    def additive(allowed):
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, lowest)[:, None]

    return {"full_attention": additive(full), "sliding_attention": additive(sliding)}


def pruned(base, method: str = "divprune"):
    model = get_pruned_model(base, TokenPruneConfig(method=method))
    if model.token_selector is not None:
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for parameter in model.token_selector.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["divprune", "visionselector", "autoselect"])
def test_kept_tokens_of_one_image_attend_both_ways(attn, method):
    """Drop equals mask with the image blocks' bidirectional part, which a causal-only mask would get wrong."""
    base = tiny_gemma3(attn)
    model = pruned(base, method)
    inputs = batch()
    with torch.no_grad():
        out = model(**inputs, prune_budget=0.3)
        reference = base(**masked(inputs, out.keep_mask)).logits
        causal_only = base(**masked(inputs, out.keep_mask, token_types=False)).logits
        without_types = model(**{k: v for k, v in inputs.items() if k != "token_type_ids"}, prune_budget=0.3)
    compared = out.keep_mask & inputs["attention_mask"].bool()
    assert not out.keep_mask.all()
    torch.testing.assert_close(out.logits[compared], reference[compared], atol=1e-4, rtol=0)
    # The test can fail: kept image tokens that saw only earlier ones would change the logits.
    assert (out.logits[compared] - causal_only[compared]).abs().max() > 1e-2
    # Without `token_type_ids` the stock model is causal only, and so is the pruned one.
    torch.testing.assert_close(without_types.logits[compared], causal_only[compared], atol=1e-4, rtol=0)


def test_compacted_token_types_mark_exactly_the_kept_image_tokens():
    model = pruned(tiny_gemma3())
    inputs = batch()
    plan = model.plan_pruning(
        inputs["input_ids"],
        inputs["attention_mask"],
        {"pixel_values": inputs["pixel_values"]},
        0.3,
        model.resolve_pruning(0.3, None)[1],
        language_inputs={"token_type_ids": inputs["token_type_ids"]},
    )
    token_types = plan.per_token_inputs["token_type_ids"]
    assert token_types.shape == plan.input_ids.shape
    assert torch.equal(token_types.bool(), (plan.input_ids == IMAGE_ID) & plan.attention_mask.bool())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["divprune", "visionselector"])
def test_sliding_window_counts_kept_tokens(attn, method):
    """With a window smaller than the prompt: the pruned forward equals the stock model fed the caller's full
    sequence with a mask whose windowed layers count kept tokens; the window over the caller's positions differs."""
    base = tiny_gemma3(attn, sliding_window=WINDOW)
    model = pruned(base, method)
    inputs = batch()
    assert inputs["input_ids"].shape[1] > 10 * WINDOW
    with torch.no_grad():
        out = model(**inputs, prune_budget=0.3)
        masks = kept_window_masks(inputs, out.keep_mask, WINDOW, base.dtype)
        reference = base(**dict(masked(inputs, out.keep_mask), attention_mask=masks)).logits
        window_over_caller_positions = base(**masked(inputs, out.keep_mask)).logits
    compared = out.keep_mask & inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[compared], reference[compared], atol=1e-4, rtol=0)
    assert (out.logits[compared] - window_over_caller_positions[compared]).abs().max() > 1e-2


def test_sliding_window_mask_oracle_is_the_stock_mask_when_nothing_is_dropped():
    """The hand-written mask reproduces the stock Gemma 3 mask (window, blocks, padding) on the unpruned sequence."""
    base = tiny_gemma3("eager", sliding_window=WINDOW)
    inputs = batch()
    everything = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    with torch.no_grad():
        stock = base(**inputs).logits
        masks = kept_window_masks(inputs, everything, WINDOW, base.dtype)
        by_hand = base(**dict(inputs, attention_mask=masks, position_ids=unpruned_positions(inputs["attention_mask"])))
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(by_hand.logits[real], stock[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_training_attention_mask_rules_are_the_stock_mask(attn):
    """`attention_allowed` (what the recipes' key-weighted 4-D mask is built on) with every weight 1 reproduces the
    stock forward: image blocks, the sliding window and padding, here with a window far shorter than the prompt."""
    from hf_tokenprune.training.recipe import key_weighted_mask

    base = tiny_gemma3(attn, sliding_window=WINDOW)
    model = pruned(base)
    inputs = batch()
    padding = inputs["attention_mask"]
    allowed = model.prune_hooks.attention_allowed(model, padding, {"token_type_ids": inputs["token_type_ids"]})
    rows, cols = torch.nonzero(inputs["input_ids"] == IMAGE_ID, as_tuple=True)
    masks = key_weighted_mask(allowed, padding, rows, cols, torch.ones(len(rows)), base.dtype)
    with torch.no_grad():
        stock = base(**inputs).logits
        weighted = base(**dict(inputs, attention_mask=masks, position_ids=unpruned_positions(padding))).logits
    real = padding.bool()
    torch.testing.assert_close(weighted[real], stock[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_with_a_short_window_is_greedy_decoding_of_the_kept_window_oracle(cache):
    """Each new token is the argmax of the stock model run on the caller's whole sequence so far (the kept-window
    mask, unpruned positions): the sliding cache of the kept sequence holds every key the window needs."""
    base = tiny_gemma3("sdpa", sliding_window=WINDOW)
    model = pruned(base)
    inputs = batch()
    settings = {} if cache == "dynamic" else {"cache_implementation": "static"}
    out = model.generate(
        **inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True, **settings
    )
    running, keep_mask = dict(inputs), out.keep_mask
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            masks = kept_window_masks(running, keep_mask, WINDOW, base.dtype)
            step = dict(running, attention_mask=masks, position_ids=unpruned_positions(running["attention_mask"]))
            next_token = base(**step).logits[:, -1].argmax(-1, keepdim=True)
            running["input_ids"] = torch.cat([running["input_ids"], next_token], dim=-1)
            for name in ("attention_mask", "token_type_ids"):
                running[name] = torch.nn.functional.pad(running[name], (0, 1), value=int(name == "attention_mask"))
            keep_mask = torch.nn.functional.pad(keep_mask, (0, 1), value=True)
    assert torch.equal(out.sequences, running["input_ids"])


def test_language_model_gets_the_stock_scaled_embeddings():
    """Text rows carry the sqrt(hidden) scale of `Gemma3TextScaledWordEmbedding`, image rows the unscaled projector
    output: exactly the stock forward's `inputs_embeds`, at the kept positions."""
    base = tiny_gemma3()
    model = pruned(base)
    inputs = batch()
    seen = []
    handle = base.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            base(**inputs)
            out = model(**inputs, prune_budget=0.3)
    finally:
        handle.remove()
    stock_embeds, pruned_embeds = seen
    kept = out.keep_mask & inputs["attention_mask"].bool()
    for row in range(kept.shape[0]):
        count = int(kept[row].sum())
        torch.testing.assert_close(pruned_embeds[row, -count:], stock_embeds[row][kept[row]], atol=0, rtol=0)
    text = (inputs["input_ids"] != IMAGE_ID) & inputs["attention_mask"].bool()
    scale = base.config.text_config.hidden_size**0.5
    expected_text = base.model.language_model.embed_tokens.weight[inputs["input_ids"][text]] * scale
    torch.testing.assert_close(stock_embeds[text], expected_text)


def picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_pan_and_scan_crops_are_image_blocks_of_their_own():
    """The stock processor's crops: one block per crop, laid out as `testing` lays them out; each block is pruned
    with its own budget, and the pruned forward is the masked stock forward."""
    base = tiny_gemma3()
    processor = tiny_processor("gemma3")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    # Call-time settings, as the processor's own defaults (pan and scan off, 256 px crops) override the image processor's.
    settings = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=8)
    inputs = processor(text=[text], images=[picture(16, 40, seed=1)], return_tensors="pt", **settings)
    crops = inputs["pixel_values"].shape[0] - 1
    assert crops >= 2
    ids = inputs["input_ids"][0].tolist()
    block, _, _ = TINY_ARCHITECTURES["gemma3"].image_block(crops, 0, torch.Generator())
    assert any(ids[i : i + len(block)] == block for i in range(len(ids))), "the processor's layout is testing's"
    assert torch.equal(inputs["token_type_ids"], (inputs["input_ids"] == IMAGE_ID).long())

    model = pruned(base)
    with torch.no_grad():
        out = model(**inputs, prune_budget=0.25)
        reference = base(**masked(dict(inputs), out.keep_mask)).logits
    is_image = inputs["input_ids"][0] == IMAGE_ID
    per_block = out.keep_mask[0][is_image].reshape(crops + 1, GEMMA3_TOKENS_PER_IMAGE).sum(-1)
    assert per_block.tolist() == [4] * (crops + 1)
    torch.testing.assert_close(out.logits[out.keep_mask], reference[out.keep_mask], atol=1e-4, rtol=0)
