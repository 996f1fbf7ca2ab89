"""The inference contract of DESIGN.md, one suite over every (architecture, method) pair.

Oracles: the stock base model (identity), the stock base model with dropped tokens masked out of
attention at unpruned positions (drop equals mask), and one-by-one runs (batching).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from transformers import TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from hf_tokenprune import AutoBudget, TokenPruneConfig, available_selectors, get_pruned_model
from hf_tokenprune.modeling.modeling_pruned_internvl import placeholder_runs
from hf_tokenprune.testing import (
    BUILDERS,
    IMAGE_ID,
    IMAGE_SIZES,
    TINY_ARCHITECTURES,
    VIDEO_ID,
    build_inputs,
    make_samples,
    make_video_inputs,
    tiny_tokenizer,
)

ARCHS = list(BUILDERS)
METHODS = [
    "visionselector",
    "autoselect",
    "reconstruction",
    "questionselector",
    "random",
    "uniform",
    "divprune",
    "dart",
]
LEARNED = {"visionselector", "autoselect", "reconstruction", "questionselector"}
NEW_TOKENS = 4


def pruned(base, method: str, **config_kwargs):
    model = get_pruned_model(base, TokenPruneConfig(method=method, **config_kwargs))
    if model.token_selector is not None:
        # Near-zero init would rank by noise-level differences; spread the scores so selection is decisive.
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for parameter in model.token_selector.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def batch_inputs(arch: str) -> dict:
    """Left-padded batch: samples with 2, 0 and 1 images, of different sizes where the architecture allows."""
    return build_inputs(arch, make_samples([2, 0, 1], IMAGE_SIZES[arch]))


def unpruned_positions(base, inputs: dict) -> torch.Tensor:
    """Positions of the full sequence, computed with the stock code (M-RoPE for the Qwen models, else mask cumsum)."""
    return TINY_ARCHITECTURES[base.config.model_type].positions(base, inputs)


def masked_base_inputs(base, inputs: dict, keep_mask: torch.Tensor) -> dict:
    """Contract line 3's oracle input: everything unpruned, dropped tokens zero in a 2-D attention mask."""
    masked = dict(inputs)
    masked["position_ids"] = unpruned_positions(base, inputs)
    masked["attention_mask"] = inputs["attention_mask"] * keep_mask.long()
    return masked


def image_runs(arch: str, input_ids: torch.Tensor) -> list[int]:
    """Placeholder tokens of each image, row-major, as the architecture groups them (one run, or several views)."""
    return TINY_ARCHITECTURES[arch].image_token_counts(input_ids)


def expected_kept(arch: str, input_ids: torch.Tensor, budget, frames_per_run: int = 1) -> list[int]:
    """Tokens kept per image (or video frame), from the placeholder runs in `input_ids`."""
    kept = []
    for runs in (image_runs(arch, input_ids), placeholder_runs(input_ids, VIDEO_ID)):
        for run in runs:
            size = run // frames_per_run
            for _ in range(frames_per_run):
                if isinstance(budget, float):
                    kept.append(min(size, max(1, math.floor(budget * size + 0.5))))
                else:
                    kept.append(min(budget, size))
    return kept


def kept_per_run(arch: str, input_ids: torch.Tensor, keep_mask: torch.Tensor, frames_per_run: int = 1) -> list[int]:
    kept = []
    for token_id in (IMAGE_ID, VIDEO_ID):
        for row in range(input_ids.shape[0]):
            row_ids = input_ids[row : row + 1]
            runs = image_runs(arch, row_ids) if token_id == IMAGE_ID else placeholder_runs(row_ids, token_id)
            positions = torch.nonzero(input_ids[row] == token_id).flatten()
            offset = 0
            for run in runs:
                size = run // frames_per_run
                for frame in range(frames_per_run):
                    frame_positions = positions[offset + frame * size : offset + (frame + 1) * size]
                    kept.append(int(keep_mask[row, frame_positions].sum()))
                offset += run
    return kept


def test_every_method_is_registered():
    assert set(METHODS) <= set(available_selectors())


# ---------------------------------------------------------------- contract 1: identity
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("budget", [None, 1.0])
def test_no_budget_is_the_base_model(base_models, arch, budget):
    base = base_models(arch)
    inputs = batch_inputs(arch)
    for model in (pruned(base, "visionselector"), pruned(base, "divprune", budget=0.3)):
        call_budget = budget if model.token_prune_config.budget is None else 1.0
        with torch.no_grad():
            expected = base(**inputs).logits
            got = model(**inputs, prune_budget=call_budget)
        assert torch.equal(got.logits, expected)
        assert got.keep_mask.all()
        expected_tokens = base.generate(**inputs, max_new_tokens=NEW_TOKENS)
        assert torch.equal(
            model.generate(**inputs, max_new_tokens=NEW_TOKENS, prune_budget=call_budget), expected_tokens
        )


# ---------------------------------------------------------------- contract 2: budget semantics
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_budget_semantics(base_models, arch, method):
    model = pruned(base_models(arch), method)
    inputs = batch_inputs(arch)
    is_visual = (inputs["input_ids"] == IMAGE_ID) | (inputs["input_ids"] == VIDEO_ID)
    for budget in (0.3, 0.5, 0.01, 1, 3, 10_000):
        with torch.no_grad():
            keep_mask = model(**inputs, prune_budget=budget).keep_mask
        assert keep_mask.shape == inputs["input_ids"].shape and keep_mask.dtype == torch.bool
        assert keep_mask[~is_visual].all(), "text and padding are never pruned"
        assert kept_per_run(arch, inputs["input_ids"], keep_mask) == expected_kept(arch, inputs["input_ids"], budget)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_budget_semantics_sample_scope(base_models, arch, method):
    """Line 2's sample-level twin: all images of a sample share one budget, k = max(1, round(b * N_sample))."""
    model = pruned(base_models(arch), method)
    inputs = build_inputs(arch, make_samples([3, 0, 2, 1], IMAGE_SIZES[arch]))
    input_ids = inputs["input_ids"]
    is_visual = (input_ids == IMAGE_ID) | (input_ids == VIDEO_ID)
    per_sample = is_visual.sum(-1).tolist()
    for budget in (0.3, 0.5, 0.01, 1, 3, 10_000):
        with torch.no_grad():
            keep_mask = model(**inputs, prune_budget=budget, prune_budget_scope="sample").keep_mask
            per_image = model(**inputs, prune_budget=budget, prune_budget_scope="image").keep_mask
            default = model(**inputs, prune_budget=budget).keep_mask
        assert keep_mask[~is_visual].all(), "text and padding are never pruned"
        expected = [
            0
            if size == 0
            else min(size, max(1, math.floor(budget * size + 0.5)) if isinstance(budget, float) else budget)
            for size in per_sample
        ]
        assert (keep_mask & is_visual).sum(-1).tolist() == expected
        assert torch.equal(per_image, default), "scope 'image' is the default"
    generated = model.generate(
        **inputs, prune_budget=0.3, prune_budget_scope="sample", max_new_tokens=1, return_dict_in_generate=True
    )
    with torch.no_grad():
        assert torch.equal(
            generated.keep_mask, model(**inputs, prune_budget=0.3, prune_budget_scope="sample").keep_mask
        )


@pytest.mark.parametrize("entry", ["forward", "generate"])
@pytest.mark.parametrize("bad_scope", ["images", "", 1, True])
def test_bad_budget_scope_fails_before_compute(base_models, entry, bad_scope):
    model = pruned(base_models("llava"), "visionselector")
    counter = VisionCallCounter(model)
    try:
        with pytest.raises(ValueError, match="prune_budget_scope.*'image', 'sample'"):
            getattr(model, entry)(**batch_inputs("llava"), prune_budget=0.2, prune_budget_scope=bad_scope)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


def test_config_default_budget_applies(base_models):
    base = base_models("qwen2_5_vl")
    inputs = batch_inputs("qwen2_5_vl")
    with torch.no_grad():
        from_default = pruned(base, "divprune", budget=0.25)(**inputs).keep_mask
        from_call = pruned(base, "divprune")(**inputs, prune_budget=0.25).keep_mask
    assert torch.equal(from_default, from_call) and not from_default.all()


# ---------------------------------------------------------------- contract 3: drop equals mask
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_drop_equals_mask(base_models, arch, method, attn):
    base = base_models(arch, attn)
    model = pruned(base, method)
    inputs = batch_inputs(arch)
    with torch.no_grad():
        out = model(**inputs, prune_budget=0.3)
        reference = base(**masked_base_inputs(base, inputs, out.keep_mask)).logits
    assert not out.keep_mask.all()
    compared = out.keep_mask & inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[compared], reference[compared], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["visionselector", "divprune", "random"])
def test_generate_continues_at_unpruned_positions(base_models, arch, method):
    """New tokens equal greedy decoding of the masked base model fed the unpruned positions."""
    base = base_models(arch)
    model = pruned(base, method)
    inputs = batch_inputs(arch)
    out = model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    reference = base.generate(**masked_base_inputs(base, inputs, out.keep_mask), max_new_tokens=NEW_TOKENS)
    length = inputs["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, length:], reference[:, length:])


# ---------------------------------------------------------------- contract 4: output layout
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_generate_returns_caller_ids_then_new_tokens(base_models, arch, method):
    model = pruned(base_models(arch), method)
    inputs = batch_inputs(arch)
    sequences = model.generate(**inputs, prune_budget=0.2, max_new_tokens=NEW_TOKENS)
    length = inputs["input_ids"].shape[1]
    assert sequences.shape == (inputs["input_ids"].shape[0], length + NEW_TOKENS)
    assert torch.equal(sequences[:, :length], inputs["input_ids"])
    # The usual trim gives what the pruned prefill predicts first.
    with torch.no_grad():
        logits = model(**inputs, prune_budget=0.2).logits
    assert torch.equal(sequences[:, length], logits[:, -1].argmax(-1))


# ---------------------------------------------------------------- contract 5: batches
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_one_by_one(base_models, arch, method, attn):
    check_batch_equals_one_by_one(pruned(base_models(arch, attn), method), arch)


def check_batch_equals_one_by_one(model, arch: str) -> None:
    """Left-padded batch of samples with 2, 0 and 1 images: new tokens, keep masks and last logits at budget 0.3 equal
    those of each sample run alone."""
    samples = make_samples([2, 0, 1], IMAGE_SIZES[arch])
    batch = build_inputs(arch, samples)
    batched = model.generate(**batch, prune_budget=0.3, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    with torch.no_grad():
        batched_logits = model(**batch, prune_budget=0.3).logits[:, -1]
    length = batch["input_ids"].shape[1]
    for row, sample in enumerate(samples):
        alone = build_inputs(arch, [sample])
        single = model.generate(**alone, prune_budget=0.3, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
        single_length = alone["input_ids"].shape[1]
        assert torch.equal(batched.sequences[row, length:], single.sequences[0, single_length:])
        assert torch.equal(batched.keep_mask[row, length - single_length :], single.keep_mask[0])
        with torch.no_grad():
            single_logits = model(**alone, prune_budget=0.3).logits[0, -1]
        torch.testing.assert_close(batched_logits[row], single_logits, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- contract 6: KV cache
@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_holds_only_kept_tokens(base_models, arch):
    model = pruned(base_models(arch), "divprune")
    inputs = batch_inputs(arch)
    seen = []

    def record(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        cached = cache.get_seq_length() if cache is not None else 0
        new = (kwargs.get("inputs_embeds") if kwargs.get("input_ids") is None else kwargs["input_ids"]).shape[1]
        seen.append((kwargs["attention_mask"].shape[-1], cached + new))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = model.generate(**inputs, prune_budget=0.25, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    finally:
        handle.remove()
    kept_length = int((out.keep_mask & inputs["attention_mask"].bool()).sum(-1).max())
    assert kept_length < inputs["input_ids"].shape[1]
    assert out.past_key_values.get_seq_length() == kept_length + NEW_TOKENS - 1
    assert len(seen) == NEW_TOKENS
    assert all(mask_length == cache_length for mask_length, cache_length in seen)


# ---------------------------------------------------------------- video (Qwen2.5-VL)
@pytest.mark.parametrize("method", METHODS)
def test_qwen_video_frames_pruned_like_images(base_models, method):
    base = base_models("qwen2_5_vl")
    model = pruned(base, method)
    inputs = make_video_inputs(frames=4, height=4, width=6)
    frames = int(inputs["video_grid_thw"][0, 0])
    with torch.no_grad():
        out = model(**inputs, prune_budget=0.34)
        reference = base(**masked_base_inputs(base, inputs, out.keep_mask)).logits
    input_ids = inputs["input_ids"]
    assert kept_per_run("qwen2_5_vl", input_ids, out.keep_mask, frames) == expected_kept(
        "qwen2_5_vl", input_ids, 0.34, frames
    )
    torch.testing.assert_close(out.logits[out.keep_mask], reference[out.keep_mask], atol=1e-4, rtol=0)
    sequences = model.generate(**inputs, prune_budget=0.34, max_new_tokens=NEW_TOKENS)
    assert torch.equal(sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


# ---------------------------------------------------------------- drop-in class
@pytest.mark.parametrize("arch", ARCHS)
def test_drop_in_class_shares_base_weights(base_models, arch):
    base = base_models(arch)
    model = pruned(base, "visionselector")
    assert isinstance(model, type(base))
    base_parameters = dict(base.named_parameters())
    for name, parameter in model.named_parameters():
        if not name.startswith("token_selector."):
            assert parameter is base_parameters[name]
    assert not hasattr(base, "token_selector"), "the base model is left unchanged"
    assert any(name.startswith("token_selector.") for name in dict(model.named_parameters()))


def test_prune_method_overrides_for_one_call(base_models):
    base = base_models("llava")
    inputs = batch_inputs("llava")
    with torch.no_grad():
        override = pruned(base, "visionselector")(**inputs, prune_budget=0.3, prune_method="divprune").keep_mask
        configured = pruned(base, "divprune")(**inputs, prune_budget=0.3).keep_mask
    assert torch.equal(override, configured)


# ---------------------------------------------------------------- contract 8: bad input
class VisionCallCounter:
    def __init__(self, model):
        self.calls = 0
        tower = getattr(model.model, "visual", None) or model.model.vision_tower
        self.handle = tower.register_forward_hook(self._count)

    def _count(self, *args):
        self.calls += 1


@pytest.mark.parametrize(
    "bad_budget, error",
    [
        (0, ValueError),
        (0.0, ValueError),
        (-0.2, ValueError),
        (1.5, ValueError),
        (float("nan"), ValueError),
        (-3, ValueError),
        ("0.2", TypeError),
        (True, TypeError),
        ([0.2], TypeError),
    ],
)
@pytest.mark.parametrize("entry", ["forward", "generate"])
def test_bad_budget_fails_before_compute(base_models, bad_budget, error, entry):
    model = pruned(base_models("qwen2_5_vl"), "visionselector")
    inputs = batch_inputs("qwen2_5_vl")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    counter = VisionCallCounter(model)
    try:
        with pytest.raises(error, match="prune_budget") as info:
            getattr(model, entry)(**inputs, prune_budget=bad_budget)
    finally:
        counter.handle.remove()
    assert "(0, 1]" in str(info.value) or ">= 1" in str(info.value) or "float" in str(info.value)
    assert counter.calls == 0
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("entry", ["forward", "generate"])
def test_unknown_method_fails_before_compute(base_models, entry):
    model = pruned(base_models("llava"), "visionselector")
    counter = VisionCallCounter(model)
    try:
        with pytest.raises(ValueError, match="prune_method.*'nope'.*divprune"):
            getattr(model, entry)(**batch_inputs("llava"), prune_budget=0.2, prune_method="nope")
        with pytest.raises(TypeError, match="prune_method"):
            getattr(model, entry)(**batch_inputs("llava"), prune_budget=0.2, prune_method=3)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


def test_learned_method_without_its_weights_is_refused(base_models):
    model = pruned(base_models("llava"), "visionselector")
    with pytest.raises(ValueError, match="prune_method.*'autoselect'.*weights"):
        model(**batch_inputs("llava"), prune_budget=0.2, prune_method="autoselect")


def test_budget_without_selector_is_refused(base_models):
    model = get_pruned_model(base_models("llava"), TokenPruneConfig(method="divprune"))
    model.token_prune_config = None
    with pytest.raises(ValueError, match="prune_budget.*prune_method"):
        model(**batch_inputs("llava"), prune_budget=0.2)


@pytest.mark.parametrize("arch", ARCHS)
def test_scorer_width_mismatch_is_refused(base_models, arch):
    base = base_models(arch)
    with pytest.raises(ValueError, match="input_dim.*999"):
        get_pruned_model(base, TokenPruneConfig(method="visionselector", input_dim=999))
    with pytest.raises(ValueError, match="input_dim"):
        get_pruned_model(
            base, TokenPruneConfig(method="autoselect", input_dim=base.config.get_text_config().hidden_size + 1)
        )
    assert not hasattr(base, "token_selector")


def test_selector_of_another_base_model_is_refused(base_models):
    base = base_models("qwen2_5_vl")
    llava_config = get_pruned_model(base_models("llava"), TokenPruneConfig(method="visionselector")).token_prune_config
    assert llava_config.base_model_type == "llava"
    with pytest.raises(ValueError, match="base_model_type.*'llava'.*'qwen2_5_vl'"):
        get_pruned_model(base, llava_config)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("method", "", ValueError),
        ("budget", 1.5, ValueError),
        ("budget", "x", TypeError),
        ("feature_source", "pixels", ValueError),
        ("scorer_hidden_size", 0, ValueError),
        ("scorer_num_heads", 0, ValueError),
        ("format_version", 99, ValueError),
    ],
)
def test_config_validation_names_the_field(field, value, error):
    with pytest.raises(error, match=field if field != "budget" else "budget"):
        TokenPruneConfig(**{field: value})


# ---------------------------------------------------------------- training-style forward
@pytest.mark.parametrize("arch", ARCHS)
def test_loss_with_labels_is_next_token_loss_over_the_kept_sequence(base_models, arch):
    """Oracle: masked base logits at the kept positions, labels shifted along the kept sequence."""
    base = base_models(arch)
    model = pruned(base, "divprune")
    inputs = batch_inputs(arch)
    is_visual = (inputs["input_ids"] == IMAGE_ID) | (inputs["input_ids"] == VIDEO_ID)
    labels = inputs["input_ids"].masked_fill(is_visual | (inputs["attention_mask"] == 0), -100)
    with torch.no_grad():
        out = model(**inputs, labels=labels, prune_budget=0.3)
        reference_logits = base(**masked_base_inputs(base, inputs, out.keep_mask)).logits
    losses, count = [], 0
    for row in range(labels.shape[0]):
        kept = out.keep_mask[row] & inputs["attention_mask"][row].bool()
        row_logits, row_labels = reference_logits[row][kept][:-1], labels[row][kept][1:]
        losses.append(torch.nn.functional.cross_entropy(row_logits, row_labels, ignore_index=-100, reduction="sum"))
        count += int((row_labels != -100).sum())
    torch.testing.assert_close(out.loss, torch.stack(losses).sum() / count, atol=1e-5, rtol=1e-5)


def test_shift_labels_are_compacted_like_labels(base_models):
    """`shift_labels` (the target of each position) give the loss `labels` give: the next kept token's label."""
    model = pruned(base_models("llava"), "divprune")
    inputs = batch_inputs("llava")
    labels = inputs["input_ids"].masked_fill((inputs["input_ids"] == IMAGE_ID) | (inputs["attention_mask"] == 0), -100)
    answer_labels = labels.clone()
    answer_labels[:, :-3] = -100  # differs from `labels`, so the loss shows which of the two was used
    shift_labels = torch.nn.functional.pad(answer_labels[:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        expected = model(**inputs, labels=answer_labels, prune_budget=0.3).loss
        # The stock loss reads `shift_labels` when given, and needs `labels` only to decide to compute a loss.
        got = model(**inputs, labels=labels, shift_labels=shift_labels, prune_budget=0.3).loss
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_row_attending_only_to_dropped_tokens_runs(base_models, arch):
    """A row whose only attended tokens are dropped becomes all padding; the other rows are unchanged (contract 3).

    Where the stock model itself refuses such a mask (Qwen2.5-VL's M-RoPE index), ours refuses it the same way.
    """
    base = base_models(arch)
    model = pruned(base, "uniform")
    inputs = batch_inputs(arch)
    with torch.no_grad():
        keep_mask = model(**inputs, prune_budget=0.3).keep_mask
    row, column = torch.nonzero(~keep_mask)[0].tolist()
    inputs["attention_mask"] = inputs["attention_mask"].clone()
    inputs["attention_mask"][row] = 0
    inputs["attention_mask"][row, column] = 1
    try:
        with torch.no_grad():
            base(**inputs)
    except Exception as error:  # whatever the stock model raises, ours must raise too
        with pytest.raises(type(error)):
            model(**inputs, prune_budget=0.3)
        return
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = model(**inputs, labels=labels, prune_budget=0.3)
        reference = base(**masked_base_inputs(base, inputs, out.keep_mask)).logits
    assert torch.equal(out.keep_mask, keep_mask) and torch.isfinite(out.loss)
    others = out.keep_mask & inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[others], reference[others], atol=1e-4, rtol=0)
    sequences = model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS)
    assert torch.equal(sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    # That row alone keeps nothing at all, and still runs as the stock model does.
    sample = make_samples([2, 0, 1], IMAGE_SIZES[arch])[row]
    alone = build_inputs(arch, [sample])
    alone["attention_mask"] = inputs["attention_mask"][row : row + 1, -alone["input_ids"].shape[1] :]
    with torch.no_grad():
        base(**alone)
        assert not model(**alone, prune_budget=0.3).keep_mask[alone["attention_mask"].bool()].any()
    model.generate(**alone, prune_budget=0.3, max_new_tokens=NEW_TOKENS)


# ---------------------------------------------------------------- contract 9: generation modes
class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts = []

    def put(self, value):
        self.puts.append(value)

    def end(self):
        pass


def greedy(model, inputs, **kwargs) -> torch.Tensor:
    return model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS, **kwargs)


GENERATION_MODES = ["beam", "sampling", "no_cache", "static_cache", "max_length", "scores", "streamer", "assisted"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", GENERATION_MODES)
def test_generation_modes_work_with_a_budget(base_models, arch, mode):
    """Each stock mode against its oracle: greedy decoding at the same budget, or the masked base model."""
    base = base_models(arch)
    model = pruned(base, "divprune")
    inputs = batch_inputs(arch)
    length = inputs["input_ids"].shape[1]
    expected = greedy(model, inputs, return_dict_in_generate=True)
    masked = masked_base_inputs(base, inputs, expected.keep_mask)
    if mode in ("beam", "sampling"):
        settings = dict(num_beams=3) if mode == "beam" else dict(do_sample=True, top_k=0)
        torch.manual_seed(0)
        got = greedy(model, inputs, num_return_sequences=2, **settings)
        torch.manual_seed(0)
        reference = base.generate(**masked, max_new_tokens=NEW_TOKENS, num_return_sequences=2, **settings)
        assert torch.equal(got[:, :length], inputs["input_ids"].repeat_interleave(2, dim=0))
        assert torch.equal(got[:, length:], reference[:, length:])
    elif mode == "no_cache":
        assert torch.equal(greedy(model, inputs, use_cache=False), expected.sequences)
    elif mode == "static_cache":
        assert torch.equal(greedy(model, inputs, cache_implementation="static"), expected.sequences)
    elif mode == "max_length":  # counts the caller's prompt, as in the stock model
        assert torch.equal(
            model.generate(**inputs, prune_budget=0.3, max_length=length + NEW_TOKENS), expected.sequences
        )
        assert base.generate(**inputs, max_length=length + NEW_TOKENS).shape == expected.sequences.shape
    elif mode == "scores":
        out = greedy(model, inputs, return_dict_in_generate=True, output_scores=True)
        assert torch.equal(out.sequences, expected.sequences) and len(out.scores) == NEW_TOKENS
        assert torch.equal(torch.stack(out.scores, 1).argmax(-1), out.sequences[:, length:])
        with torch.no_grad():
            prefill = model(**inputs, prune_budget=0.3).logits[:, -1]
        torch.testing.assert_close(out.scores[0], prefill, atol=1e-5, rtol=0)
    elif mode == "streamer":
        single = build_inputs(arch, make_samples([1], IMAGE_SIZES[arch]))
        streamer = RecordingStreamer()
        sequences = greedy(model, single, streamer=streamer)
        assert torch.equal(streamer.puts[0], single["input_ids"].cpu()), "the prompt part is the caller's prompt"
        assert torch.equal(torch.cat(streamer.puts[1:]), sequences[0, single["input_ids"].shape[1] :].cpu())
        tokenizer = tiny_tokenizer()
        text_streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        greedy(model, single, streamer=text_streamer)
        new_text = tokenizer.decode(sequences[0, single["input_ids"].shape[1] :])
        assert "".join(text_streamer).strip() == new_text.strip()
    elif mode == "assisted":  # batch size 1 only, as in the stock model
        single = build_inputs(arch, make_samples([1], IMAGE_SIZES[arch]))
        reference = greedy(model, single)
        for assistant in (model, base):
            assert torch.equal(greedy(model, single, assistant_model=assistant), reference)
        assert torch.equal(greedy(model, single, prompt_lookup_num_tokens=2), reference)


@pytest.mark.parametrize("arch", ARCHS)
def test_continuing_from_a_pruned_cache_is_refused(base_models, arch):
    """The returned cache holds the kept sequence, not the caller's: passing it back fails, naming the argument."""
    model = pruned(base_models(arch), "divprune")
    inputs = batch_inputs(arch)
    out = greedy(model, inputs, return_dict_in_generate=True)
    continued = dict(
        inputs,
        input_ids=out.sequences,
        attention_mask=torch.nn.functional.pad(inputs["attention_mask"], (0, NEW_TOKENS), value=1),
        past_key_values=out.past_key_values,
    )
    for budget in (0.3, None):
        with pytest.raises(ValueError, match="past_key_values.*pruned.*generate"):
            model.generate(**continued, prune_budget=budget, max_new_tokens=2)
        with pytest.raises(ValueError, match="past_key_values.*pruned.*generate"):
            model(**continued, prune_budget=budget)


# ---------------------------------------------------------------- adaptive budgets (prune_budget="auto")
AUTO_BUDGETS = ["auto", "auto:0.5", AutoBudget(threshold=0.99, min_fraction=0.1, max_fraction=0.9)]


def reference_auto_keep(scores: torch.Tensor, budget: AutoBudget) -> list[int]:
    """The "auto" rule computed another way (numpy, one segment): the fewest top-scored tokens whose softmax mass (of the
    z-scored scores) reaches the threshold, clamped to the fraction bounds rounded as float budgets are; positions ascending."""
    values = scores.double().cpu().numpy()
    values = (values - values.mean()) / values.std() if values.std() > 0 else np.zeros_like(values)
    probabilities = np.exp(values - values.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-values, kind="stable")
    count = int(np.searchsorted(np.cumsum(probabilities[order]), budget.threshold - 1e-12) + 1)
    size = len(values)
    low, high = (
        min(size, max(1, math.floor(fraction * size + 0.5))) for fraction in (budget.min_fraction, budget.max_fraction)
    )
    return sorted(order[: max(low, min(high, count))].tolist())


def expected_auto_mask(model, inputs: dict, budget: AutoBudget, scope: str = "image") -> torch.Tensor:
    """keep_mask an "auto" budget must give: each unit (image / frame, or a sample's images together) scored alone."""
    selector = model.token_selector
    vision_inputs, _ = model.split_vision_inputs(dict(inputs))
    with torch.no_grad():
        placed = model.place_visual_segments(
            inputs["input_ids"], vision_inputs, need_features=selector.feature_source == "vision_features"
        )
    units = placed
    if scope == "sample":
        units = []
        for row in sorted({int(rows[0]) for _, rows, _ in placed}):
            members = [item for item in placed if int(item[1][0]) == row]
            units.append((members, torch.cat([m[1] for m in members]), torch.cat([m[2] for m in members])))
    keep_mask = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    for unit, rows, cols in units:
        segments = unit if scope == "sample" else [(unit, rows, cols)]
        use_features = selector.feature_source == "vision_features"
        features = torch.cat([segment.features if use_features else segment.embeds for segment, *_ in segments])
        dtype = next(selector.parameters()).dtype
        with torch.no_grad():
            if selector.uses_prompt:  # the row's attended text tokens, embedded
                row_ids, row_mask = inputs["input_ids"][int(rows[0])], inputs["attention_mask"][int(rows[0])].bool()
                text = row_ids[row_mask & (row_ids != IMAGE_ID) & (row_ids != VIDEO_ID)]
                scores = selector.score(features.to(dtype), model.get_input_embeddings()(text).to(dtype))
            else:
                scores = selector.score(features.to(dtype))
        kept = reference_auto_keep(scores, budget)
        keep_mask[rows, cols] = False
        keep_mask[rows[kept], cols[kept]] = True
    return keep_mask


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", sorted(LEARNED))
def test_auto_budget_keeps_what_the_scores_choose(base_models, arch, method):
    model = pruned(base_models(arch), method)
    inputs = batch_inputs(arch)
    counts = set()
    for budget in AUTO_BUDGETS:
        parsed = budget if isinstance(budget, AutoBudget) else AutoBudget.from_string(budget)
        with torch.no_grad():
            keep_mask = model(**inputs, prune_budget=budget).keep_mask
        assert torch.equal(keep_mask, expected_auto_mask(model, inputs, parsed))
        counts.add(int(keep_mask.sum()))
    assert len(counts) > 1, "the settings change what is kept"


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava_next", "internvl"])
def test_auto_budget_sample_scope(base_models, arch):
    model = pruned(base_models(arch), "autoselect")
    inputs = build_inputs(arch, make_samples([3, 0, 2, 1], IMAGE_SIZES[arch]))
    with torch.no_grad():
        keep_mask = model(**inputs, prune_budget="auto:0.8", prune_budget_scope="sample").keep_mask
    assert torch.equal(keep_mask, expected_auto_mask(model, inputs, AutoBudget(0.8), scope="sample"))


@pytest.mark.parametrize("arch", ARCHS)
def test_auto_budget_keeping_everything_is_the_base_model(base_models, arch):
    base = base_models(arch)
    model = pruned(base, "visionselector")
    inputs = batch_inputs(arch)
    everything = AutoBudget(threshold=0.5, min_fraction=1.0, max_fraction=1.0)
    with torch.no_grad():
        out = model(**inputs, prune_budget=everything)
        expected = base(**inputs).logits
    assert out.keep_mask.all()
    attended = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[attended], expected[attended], atol=1e-5, rtol=0)
    generated = model.generate(**inputs, prune_budget=everything, max_new_tokens=NEW_TOKENS)
    assert torch.equal(generated, base.generate(**inputs, max_new_tokens=NEW_TOKENS))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", sorted(LEARNED))
def test_auto_budget_drop_equals_mask(base_models, arch, method):
    base = base_models(arch, "sdpa")
    model = pruned(base, method)
    inputs = batch_inputs(arch)
    with torch.no_grad():
        out = model(**inputs, prune_budget="auto")
        reference = base(**masked_base_inputs(base, inputs, out.keep_mask)).logits
    assert not out.keep_mask.all()
    compared = out.keep_mask & inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[compared], reference[compared], atol=1e-4, rtol=0)
    generated = model.generate(**inputs, prune_budget="auto", max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    assert torch.equal(generated.keep_mask, out.keep_mask)
    expected = base.generate(**masked_base_inputs(base, inputs, out.keep_mask), max_new_tokens=NEW_TOKENS)
    length = inputs["input_ids"].shape[1]
    assert torch.equal(generated.sequences[:, length:], expected[:, length:])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", sorted(LEARNED))
def test_auto_budget_batch_equals_one_by_one(base_models, arch, method):
    model = pruned(base_models(arch, "sdpa"), method)
    samples = make_samples([2, 0, 1], IMAGE_SIZES[arch])
    batch = build_inputs(arch, samples)
    batched = model.generate(**batch, prune_budget="auto", max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    length = batch["input_ids"].shape[1]
    for row, sample in enumerate(samples):
        alone = build_inputs(arch, [sample])
        single = model.generate(**alone, prune_budget="auto", max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
        single_length = alone["input_ids"].shape[1]
        assert torch.equal(batched.sequences[row, length:], single.sequences[0, single_length:])
        assert torch.equal(batched.keep_mask[row, length - single_length :], single.keep_mask[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_auto_budget_kv_cache_holds_only_kept_tokens(base_models, arch):
    model = pruned(base_models(arch), "reconstruction")
    inputs = batch_inputs(arch)
    out = model.generate(**inputs, prune_budget="auto", max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    kept_length = int((out.keep_mask & inputs["attention_mask"].bool()).sum(-1).max())
    assert kept_length < inputs["input_ids"].shape[1]
    assert out.past_key_values.get_seq_length() == kept_length + NEW_TOKENS - 1


@pytest.mark.parametrize(
    "bad_budget, message",
    [
        ("auto:0", r"threshold.*\(0, 1\]"),
        ("auto:1.5", r"threshold.*\(0, 1\]"),
        ("auto:x", "floats"),
        ("auto:0.9:0.6:0.4", "max_fraction.*min_fraction"),
        ("auto:0.9:0:0.5", r"min_fraction.*\(0, 1\]"),
        ("auto:0.9:0.1:0.5:1", "auto:THRESHOLD"),
        ("auto:nan", r"threshold.*\(0, 1\]"),
    ],
)
@pytest.mark.parametrize("entry", ["forward", "generate"])
def test_bad_auto_budget_fails_before_compute(base_models, bad_budget, message, entry):
    model = pruned(base_models("qwen2_5_vl"), "visionselector")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    counter = VisionCallCounter(model)
    try:
        with pytest.raises(ValueError, match="prune_budget") as info:
            getattr(model, entry)(**batch_inputs("qwen2_5_vl"), prune_budget=bad_budget)
    finally:
        counter.handle.remove()
    assert re.search(message, str(info.value))
    assert counter.calls == 0
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("method", ["random", "uniform", "divprune", "dart"])
@pytest.mark.parametrize("entry", ["forward", "generate"])
def test_auto_budget_of_a_method_without_scores_is_refused(base_models, method, entry):
    model = pruned(base_models("llava"), "visionselector")
    counter = VisionCallCounter(model)
    try:
        with pytest.raises(ValueError, match=f"prune_budget.*'auto'.*prune_method.*'{method}'.*does not score"):
            getattr(model, entry)(**batch_inputs("llava"), prune_budget="auto", prune_method=method)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


def test_auto_budget_as_the_config_default(base_models):
    base = base_models("llava")
    config = TokenPruneConfig(method="autoselect", budget=AutoBudget(threshold=0.7))
    assert config.budget == "auto:0.7"
    assert TokenPruneConfig.from_dict(config.to_dict()).budget == "auto:0.7"
    model = pruned(base, "autoselect", budget="auto:0.7")
    inputs = batch_inputs("llava")
    with torch.no_grad():
        from_default = model(**inputs).keep_mask
        from_call = model(**inputs, prune_budget=AutoBudget(threshold=0.7)).keep_mask
    assert torch.equal(from_default, from_call) and not from_default.all()
    with pytest.raises(ValueError, match="budget.*threshold"):
        TokenPruneConfig(method="autoselect", budget="auto:2")


def test_auto_budget_round_trips_through_its_string():
    for budget in (AutoBudget(), AutoBudget(0.8), AutoBudget(0.8, 0.05), AutoBudget(0.8, 0.05, 0.4)):
        assert AutoBudget.from_string(str(budget)) == budget
    assert str(AutoBudget()) == "auto" and str(AutoBudget(0.9, 0.02, 0.3)) == "auto:0.9:0.02:0.3"
