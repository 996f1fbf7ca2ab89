"""Batched selection: one `select_segments` call per forward picks exactly what one `select` per segment picks.

Oracle: the selector called one image / frame at a time (`select`), as selection ran before batching. Kept indices must
be identical, not close. Every registered method, every tiny architecture, a left-padded batch of images of different
sizes (and samples without images), video frames, and third-party selectors that define only the per-segment methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hf_tokenprune import TokenPruneConfig, available_selectors, get_pruned_model
from hf_tokenprune.modeling.configuration_token_prune import METHOD_CONFIG_CLASSES
from hf_tokenprune.modeling.selection_ops import hard_topk_indices_padded, pad_segments
from hf_tokenprune.modeling.selector_autoselect import AutoSelectConfig, AutoSelectScorer
from hf_tokenprune.modeling.token_selectors import TokenSelector, get_selector_class
from hf_tokenprune.testing import (
    BUILDERS,
    IMAGE_SIZES,
    build_inputs,
    make_llava_onevision_video_inputs,
    make_samples,
    make_video_inputs,
    tiny_qwen3_vl_video_inputs,
)

# A selector that reads the prompt has no prompt-free `select`: test_selectors checks its batch against one-by-one.
METHODS = [method for method in available_selectors() if not get_selector_class(method).uses_prompt]
INPUT_DIM, LLM_HIDDEN_SIZE = 16, 32


def spread_weights(selector: torch.nn.Module, seed: int = 7) -> None:
    """Near-zero init ranks by noise; spread the weights so scores are decisive (as test_contract does)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in selector.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def make_selector(method: str, **fields) -> TokenSelector:
    config = METHOD_CONFIG_CLASSES[method](method=method, **fields)
    selector = get_selector_class(method)(config, INPUT_DIM, LLM_HIDDEN_SIZE).eval()
    spread_weights(selector)
    return selector


def per_segment(selector: TokenSelector, features, num_keep, grid_hw):
    """The oracle: `select` on each segment alone."""
    return [selector.select(f, k, grid_hw=g) for f, k, g in zip(features, num_keep, grid_hw, strict=True)]


# Unequal lengths, grids that do and do not match, k from 1 to N.
SEGMENTS = [(12, 3, (3, 4)), (30, 7, (5, 6)), (5, 5, None), (17, 1, (4, 4)), (30, 29, (6, 5)), (1, 1, (1, 1))]


@pytest.mark.parametrize("method", METHODS)
def test_select_segments_equals_select_per_segment(method):
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(n, INPUT_DIM, generator=generator) for n, _, _ in SEGMENTS]
    num_keep = [k for _, k, _ in SEGMENTS]
    grid_hw = [g for _, _, g in SEGMENTS]
    selector = make_selector(method)
    with torch.no_grad():
        batched = selector.select_segments(features, num_keep, grid_hw=grid_hw)
        oracle = per_segment(selector, features, num_keep, grid_hw)
    assert [b.tolist() for b in batched] == [o.tolist() for o in oracle]
    for keep_indices, keep in zip(batched, num_keep, strict=True):
        assert keep_indices.dtype == torch.int64 and keep_indices.numel() == keep


def test_dart_pivot_count_differs_per_segment():
    """num_keep below `dart_num_pivots` in one segment and above it in another: each keeps its own pivot count."""
    generator = torch.Generator().manual_seed(1)
    features = [torch.randn(n, INPUT_DIM, generator=generator) for n in (20, 9, 40)]
    selector = make_selector("dart", dart_num_pivots=4)
    with torch.no_grad():
        batched = selector.select_segments(features, [2, 9, 13])
        oracle = per_segment(selector, features, [2, 9, 13], [None] * 3)
    assert [b.tolist() for b in batched] == [o.tolist() for o in oracle]


def test_select_segments_rejects_mismatched_lists():
    selector = make_selector("uniform")
    with pytest.raises(ValueError, match="one entry per segment"):
        selector.select_segments([torch.zeros(4, INPUT_DIM)], [1, 2])
    with pytest.raises(ValueError, match="num_keep"):
        make_selector("autoselect").select_segments([torch.zeros(4, INPUT_DIM)], [5])


def test_padded_topk_ranks_padding_after_real_minus_infinity():
    scores = torch.tensor([[-float("inf"), 1.0, -float("inf"), 0.0], [2.0, -float("inf"), 0.0, 0.0]])
    token_mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    kept = hard_topk_indices_padded(scores, token_mask, [3, 4])
    assert kept[0].tolist() == [0, 1, 2]  # the two real -inf before the padding
    assert kept[1].tolist() == [0, 1, 2, 3]


def test_pad_segments_layout():
    padded, token_mask = pad_segments([torch.ones(2, 3), torch.ones(4, 3)])
    assert padded.shape == (2, 4, 3) and padded[0, 2:].abs().sum() == 0
    assert token_mask.tolist() == [[True, True, False, False], [True, True, True, True]]


# ------------------------------------------------------------------ whole models


def pruned_model(base, method: str):
    # An in-LLM method (fastv) drops after layer 1 of the tiny 2-layer language models.
    extra = {"layer": 1} if get_selector_class(method).in_llm else {}
    model = get_pruned_model(base, TokenPruneConfig(method=method, **extra))
    if model.token_selector is not None:
        spread_weights(model.token_selector)
    return model


class SelectionCalls:
    """Counts `select_segments` and batched scorer calls on a selector (instance attributes, removed on exit)."""

    def __init__(self, selector: TokenSelector, per_segment_oracle: bool = False) -> None:
        self.selector, self.per_segment_oracle = selector, per_segment_oracle
        self.select_segments_calls = self.scorer_calls = 0
        self.segments_per_call: list[int] = []

    def __enter__(self):
        selector, batched = self.selector, self.selector.select_segments
        scorer = selector.score_padded

        def select_segments(features, num_keep, grid_hw=None, generator=None):
            self.select_segments_calls += 1
            self.segments_per_call.append(len(features))
            if self.per_segment_oracle:
                return per_segment(selector, features, num_keep, grid_hw or [None] * len(features))
            return batched(features, num_keep, grid_hw=grid_hw, generator=generator)

        def score_padded(features, token_mask):
            self.scorer_calls += 1
            return scorer(features, token_mask)

        selector.select_segments, selector.score_padded = select_segments, score_padded
        return self

    def __exit__(self, *exc):
        del self.selector.select_segments, self.selector.score_padded


def keep_masks(model, inputs: dict, **prune_kwargs) -> tuple[torch.Tensor, torch.Tensor, SelectionCalls]:
    """(batched keep_mask, per-segment oracle keep_mask, the batched run's call counts) of one pruned forward."""
    selector = model.resolve_pruning(prune_kwargs["prune_budget"], None)[1]
    with torch.no_grad():
        with SelectionCalls(selector) as calls:
            batched = model(**inputs, **prune_kwargs).keep_mask
        with SelectionCalls(selector, per_segment_oracle=True):
            oracle = model(**inputs, **prune_kwargs).keep_mask
    return batched, oracle, calls


def check_one_call(calls: SelectionCalls, method: str, segments: int) -> None:
    assert calls.select_segments_calls == 1
    assert calls.segments_per_call == [segments]
    if method in ("visionselector", "autoselect", "reconstruction"):
        assert calls.scorer_calls == 1  # one scorer pass for every image of the batch


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_batch_of_mixed_images_selects_as_one_by_one(base_models, arch, method):
    """Left-padded batch, samples with 2, 0 and 1 images of different sizes: identical kept tokens."""
    inputs = build_inputs(arch, make_samples([2, 0, 1], IMAGE_SIZES[arch]))
    model = pruned_model(base_models(arch), method)
    batched, oracle, calls = keep_masks(model, inputs, prune_budget=0.5)
    assert torch.equal(batched, oracle)
    assert not batched.all()  # something was pruned, so the comparison means something
    assert calls.select_segments_calls == 1
    if method in ("visionselector", "autoselect", "reconstruction"):
        assert calls.scorer_calls == 1


@pytest.mark.parametrize("method", ["visionselector", "autoselect", "divprune", "dart"])
def test_sample_scope_batches_samples(base_models, method):
    inputs = build_inputs("qwen2_5_vl", make_samples([2, 0, 1], IMAGE_SIZES["qwen2_5_vl"]))
    model = pruned_model(base_models("qwen2_5_vl"), method)
    batched, oracle, calls = keep_masks(model, inputs, prune_budget=0.3, prune_budget_scope="sample")
    assert torch.equal(batched, oracle) and not batched.all()
    check_one_call(calls, method, segments=2)  # two samples hold images


VIDEOS = {
    # (architecture, inputs, frames selected as separate segments)
    "qwen2_5_vl": (lambda: make_video_inputs(frames=8, height=4, width=6), 4),
    "qwen3_vl": (lambda: tiny_qwen3_vl_video_inputs(frames=6, height=4, width=4), 3),
    "llava_onevision": (lambda: make_llava_onevision_video_inputs(frames=5), None),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(VIDEOS))
def test_video_frames_select_as_one_by_one(base_models, arch, method):
    make, _ = VIDEOS[arch]
    model = pruned_model(base_models(arch), method)
    batched, oracle, calls = keep_masks(model, make(), prune_budget=0.4)
    assert torch.equal(batched, oracle) and not batched.all()
    assert calls.select_segments_calls == 1
    if method in ("visionselector", "autoselect", "reconstruction"):
        assert calls.scorer_calls == 1


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_video_frames_are_separate_segments(base_models, arch):
    """Each temporal frame group is its own unit of the budget, all selected in the one call."""
    make, frames = VIDEOS[arch]
    model = pruned_model(base_models(arch), "autoselect")
    _, _, calls = keep_masks(model, make(), prune_budget=0.4)
    check_one_call(calls, "autoselect", segments=frames)


# ------------------------------------------------------------------ third-party selectors


@dataclass
class ThirdPartyConfig(TokenPruneConfig):
    method: str = "third_party"


class ScoreOnlySelector(TokenSelector):
    """Implements only the per-segment `score`, as selectors written before batching do."""

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, 0] - features[:, 1]


class SelectOnlySelector(TokenSelector):
    """Implements only the per-segment `select`: the last `num_keep` tokens."""

    def select(self, features, num_keep, grid_hw=None, generator=None):
        return torch.arange(features.shape[0] - num_keep, features.shape[0])


class RescoredAutoSelect(AutoSelectScorer):
    """A subclass of a batched built-in that changes only `score`: its `score` must still be what ranks."""

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return -super().score(features)


@pytest.mark.parametrize("selector_cls", [ScoreOnlySelector, SelectOnlySelector, RescoredAutoSelect])
def test_third_party_per_segment_selectors_keep_working(selector_cls):
    config = AutoSelectConfig() if selector_cls is RescoredAutoSelect else ThirdPartyConfig()
    selector = selector_cls(config, INPUT_DIM, LLM_HIDDEN_SIZE).eval()
    spread_weights(selector)
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(n, INPUT_DIM, generator=generator) for n in (9, 14, 3)]
    num_keep = [4, 2, 3]
    calls = []
    select = selector.select

    def counted_select(*args, **kwargs):
        calls.append(args[0].shape[0])
        return select(*args, **kwargs)

    selector.select = counted_select  # an instance-level `select` is itself a redefinition the batched path honours
    with torch.no_grad():
        batched = selector.select_segments(features, num_keep)
    assert calls == [9, 14, 3]  # the fallback: one `select` per segment
    del selector.select
    with torch.no_grad():
        expected = [
            torch.sort(torch.sort(selector.score(f), descending=True, stable=True).indices[:k]).values
            if selector_cls is not SelectOnlySelector
            else torch.arange(f.shape[0] - k, f.shape[0])
            for f, k in zip(features, num_keep, strict=True)
        ]
        assert [b.tolist() for b in selector.select_segments(features, num_keep)] == [e.tolist() for e in expected]
    assert [b.tolist() for b in batched] == [e.tolist() for e in expected]


def test_subclass_of_batched_builtin_uses_its_score():
    """RescoredAutoSelect negates the score, so it keeps the complement ranking of the stock scorer."""
    stock, rescored = AutoSelectScorer(AutoSelectConfig(), INPUT_DIM, LLM_HIDDEN_SIZE).eval(), None
    spread_weights(stock)
    rescored = RescoredAutoSelect(AutoSelectConfig(), INPUT_DIM, LLM_HIDDEN_SIZE).eval()
    rescored.load_state_dict(stock.state_dict())
    features = torch.randn(10, INPUT_DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        kept_stock = stock.select_segments([features], [5])[0]
        kept_rescored = rescored.select_segments([features], [5])[0]
    assert set(kept_stock.tolist()).isdisjoint(kept_rescored.tolist())
