"""What Qwen3-VL adds to the contract suite: DeepStack, interleaved M-RoPE in decoding, videos with timestamps.

Oracles: the stock model (its own DeepStack features, `get_rope_index` positions and decode positions), and the stock
model with the dropped tokens masked out of attention at the unpruned positions.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.testing import (
    IMAGE_ID,
    IMAGE_SIZES,
    TINY_ARCHITECTURES,
    VEND,
    VIDEO_ID,
    VSTART,
    build_inputs,
    make_samples,
    tiny_qwen3_vl,
    tiny_qwen3_vl_video_inputs,
)

METHODS = ["visionselector", "autoselect", "reconstruction", "random", "uniform", "divprune", "dart"]
NEW_TOKENS = 4


def pruned(base, method: str):
    model = get_pruned_model(base, TokenPruneConfig(method=method))
    if model.token_selector is not None:
        generator = torch.Generator().manual_seed(7)  # decisive scores, as in the contract suite
        with torch.no_grad():
            for parameter in model.token_selector.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def masked_inputs(base, inputs: dict, keep_mask: torch.Tensor) -> dict:
    """Everything unpruned (pixels too, so the stock model computes its own DeepStack), dropped tokens masked out."""
    return dict(
        inputs,
        position_ids=TINY_ARCHITECTURES["qwen3_vl"].positions(base, inputs),
        attention_mask=inputs["attention_mask"] * keep_mask.long(),
    )


class LanguageModelInputs:
    """Records the keyword inputs every call of the language model (`model.model.language_model`) ran with."""

    def __init__(self, model):
        self.calls = []
        # A forward hook sees the inputs as the forward got them, after every pre-hook.
        self.handle = model.model.language_model.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, output):
        self.calls.append(dict(kwargs))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def deepstack_heavy():
    """The tiny model with DeepStack mergers scaled up, so that an injection lost or misplaced shows in the logits."""
    base = tiny_qwen3_vl("eager")
    with torch.no_grad():
        for merger in base.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.mul_(5.0)
    return base


def batch_inputs():
    return build_inputs("qwen3_vl", make_samples([2, 0, 1], IMAGE_SIZES["qwen3_vl"]))


# ---------------------------------------------------------------- DeepStack
@pytest.mark.parametrize("method", ["divprune", "visionselector", "autoselect"])
def test_pruned_forward_injects_the_kept_tokens_deepstack_features(deepstack_heavy, method):
    base = deepstack_heavy
    model = pruned(base, method)
    inputs = batch_inputs()
    with torch.no_grad(), LanguageModelInputs(model) as recorded:
        out = model(**inputs, prune_budget=0.3)
    with torch.no_grad():
        reference = base(**masked_inputs(base, inputs, out.keep_mask)).logits
        # The same oracle with DeepStack switched off: the check below must be able to tell the two apart.
        handle = base.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: (args, {**kwargs, "deepstack_visual_embeds": None}), with_kwargs=True
        )
        try:
            without_deepstack = base(**masked_inputs(base, inputs, out.keep_mask)).logits
        finally:
            handle.remove()
    compared = out.keep_mask & inputs["attention_mask"].bool()
    assert not out.keep_mask.all()
    torch.testing.assert_close(out.logits[compared], reference[compared], atol=1e-4, rtol=0)
    assert (out.logits[compared] - without_deepstack[compared]).abs().max() > 1e-2

    # What reached the language model: visual_pos_masks marks exactly the kept visual slots, and every level holds
    # the stock vision tower's DeepStack features of the kept tokens, in order.
    (call,) = recorded.calls
    is_visual = inputs["input_ids"] == IMAGE_ID
    kept_visual = (out.keep_mask & is_visual).sum(-1)
    assert torch.equal(call["visual_pos_masks"].sum(-1), kept_visual)
    with torch.no_grad():
        stock = base.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    kept_in_order = out.keep_mask[is_visual]  # row-major over the placeholders, as the stock features are ordered
    assert len(call["deepstack_visual_embeds"]) == len(base.config.vision_config.deepstack_visual_indexes)
    for level, injected in zip(stock.deepstack_features, call["deepstack_visual_embeds"], strict=True):
        torch.testing.assert_close(injected, torch.cat(level)[kept_in_order], atol=1e-6, rtol=0)


def test_generate_injects_deepstack_once_at_prefill_and_each_step_without_cache(deepstack_heavy):
    """Greedy decoding equals the masked stock model's (DeepStack included), with and without the cache."""
    base = deepstack_heavy
    model = pruned(base, "divprune")
    inputs = batch_inputs()
    length = inputs["input_ids"].shape[1]
    with LanguageModelInputs(model) as recorded:
        out = model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    reference = base.generate(**masked_inputs(base, inputs, out.keep_mask), max_new_tokens=NEW_TOKENS)
    assert torch.equal(out.sequences[:, :length], inputs["input_ids"])
    assert torch.equal(out.sequences[:, length:], reference[:, length:])
    injected = [call.get("deepstack_visual_embeds") is not None for call in recorded.calls]
    assert injected == [True] + [False] * (NEW_TOKENS - 1), "the prefill carries DeepStack, decode steps don't"
    no_cache = model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, use_cache=False)
    assert torch.equal(no_cache, out.sequences)


# ---------------------------------------------------------------- interleaved M-RoPE
def test_kept_tokens_keep_their_unpruned_3d_positions(deepstack_heavy):
    base = deepstack_heavy
    assert base.config.text_config.rope_parameters["mrope_interleaved"]
    model = pruned(base, "uniform")
    inputs = batch_inputs()
    with torch.no_grad(), LanguageModelInputs(model) as recorded:
        out = model(**inputs, prune_budget=0.3)
    unpruned = TINY_ARCHITECTURES["qwen3_vl"].positions(base, inputs)  # stock get_rope_index, (3, B, L)
    got = recorded.calls[0]["position_ids"]
    reaching = out.keep_mask & inputs["attention_mask"].bool()
    for row in range(inputs["input_ids"].shape[0]):
        kept = int(reaching[row].sum())
        assert torch.equal(got[:, row, got.shape[-1] - kept :], unpruned[:, row, reaching[row]])


def test_decoding_continues_at_the_unpruned_positions(deepstack_heavy):
    """Each decode step's positions, and the cached rope deltas left behind, are the unpruned model's."""
    base = deepstack_heavy
    model = pruned(base, "divprune")
    inputs = batch_inputs()
    with LanguageModelInputs(base) as stock_calls:
        base.generate(**inputs, max_new_tokens=NEW_TOKENS)
    stock_deltas = base.model.rope_deltas.clone()
    with LanguageModelInputs(model) as pruned_calls:
        out = model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    assert len(stock_calls.calls) == len(pruned_calls.calls) == NEW_TOKENS
    for stock_step, pruned_step in zip(stock_calls.calls[1:], pruned_calls.calls[1:], strict=True):
        # The stock model carries a text row in front of its three M-RoPE rows; at decode steps they agree.
        torch.testing.assert_close(pruned_step["position_ids"][-3:], stock_step["position_ids"][-3:], atol=0, rtol=0)
    real = inputs["attention_mask"].bool()
    kept = (out.keep_mask & real).sum(-1, keepdim=True)
    # The next position is cache length + delta, for the unpruned sequence and for the kept one alike.
    assert torch.equal(kept + model.model.rope_deltas, real.sum(-1, keepdim=True) + stock_deltas)


# ---------------------------------------------------------------- video with timestamps
def frame_runs(input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Positions of each frame's video tokens (one run per frame: timestamps and start / end tokens split them)."""
    positions = torch.nonzero(input_ids[0] == VIDEO_ID).flatten()
    breaks = torch.nonzero(positions[1:] - positions[:-1] > 1).flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


@pytest.mark.parametrize("method", METHODS)
def test_video_frames_are_units_and_timestamps_stay(method):
    base = tiny_qwen3_vl("eager")
    model = pruned(base, method)
    inputs = tiny_qwen3_vl_video_inputs(frames=4, height=4, width=6)
    runs = frame_runs(inputs["input_ids"])
    assert len(runs) == int(inputs["video_grid_thw"][0, 0]), "one run of video tokens per frame group"
    # The processor's timestamp text ("<t seconds>") sits between frames: text tokens, neither vision nor padding.
    between = inputs["input_ids"][0, int(runs[0][-1]) + 1 : int(runs[1][0])].tolist()
    assert between[0] == VEND and between[-1] == VSTART and len(between) > 2, "end, the timestamp's words, start"
    assert not set(between[1:-1]) & {VSTART, VEND, IMAGE_ID, VIDEO_ID}
    budget = 0.34
    with torch.no_grad():
        out = model(**inputs, prune_budget=budget)
        reference = base(**masked_inputs(base, inputs, out.keep_mask)).logits
    for run in runs:
        assert int(out.keep_mask[0, run].sum()) == max(1, math.floor(budget * len(run) + 0.5))
    assert out.keep_mask[inputs["input_ids"] != VIDEO_ID].all(), "every text token (timestamps too) is kept"
    torch.testing.assert_close(out.logits[out.keep_mask], reference[out.keep_mask], atol=1e-4, rtol=0)
    sequences = model.generate(**inputs, prune_budget=budget, max_new_tokens=NEW_TOKENS)
    expected = base.generate(**masked_inputs(base, inputs, out.keep_mask), max_new_tokens=NEW_TOKENS)
    length = inputs["input_ids"].shape[1]
    assert torch.equal(sequences[:, :length], inputs["input_ids"])
    assert torch.equal(sequences[:, length:], expected[:, length:])


def test_video_positions_restart_after_each_timestamp():
    """Kept video tokens keep the per-frame positions `get_rope_index` gives (each frame offset by its timestamp)."""
    base = tiny_qwen3_vl("eager")
    model = pruned(base, "random")
    inputs = tiny_qwen3_vl_video_inputs(frames=6, height=4, width=4)
    with torch.no_grad(), LanguageModelInputs(model) as recorded:
        out = model(**inputs, prune_budget=0.5)
    unpruned = TINY_ARCHITECTURES["qwen3_vl"].positions(base, inputs)
    assert torch.equal(recorded.calls[0]["position_ids"][:, 0], unpruned[:, 0, out.keep_mask[0]])
