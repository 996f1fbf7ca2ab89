"""Tests for modeling/selection_ops.py (hard top-k) and training/relaxations.py, each against an independent oracle."""

from __future__ import annotations

import math

import pytest
import torch

from hf_tokenprune.modeling.selection_ops import hard_topk_indices
from hf_tokenprune.training.relaxations import differentiable_topk, gumbel_keep_mask, soft_topk, zscore


def _brute_force_topk(values: list[float], k: int) -> list[int]:
    """Highest k values, earlier position first on ties, returned in position order."""
    ranked = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(ranked[:k])


def _hard_indicator(scores: torch.Tensor, k: int) -> torch.Tensor:
    indicator = torch.zeros_like(scores)
    indicator[_brute_force_topk(scores.tolist(), k)] = 1.0
    return indicator


def _reference_mask(scores: torch.Tensor, k: float) -> torch.Tensor:
    """sigmoid(s + t) with sum = k, t from a plain bisection over a fixed wide bracket (float64)."""
    scores = scores.double()
    lower, upper = -1e4, 1e4
    for _ in range(200):
        mid = (lower + upper) / 2
        if torch.sigmoid(scores + mid).sum().item() < k:
            lower = mid
        else:
            upper = mid
    return torch.sigmoid(scores + (lower + upper) / 2)


def _separated_scores(num_tokens: int, seed: int) -> torch.Tensor:
    """A random permutation of 0..N-1 plus small noise: neighbouring scores are ~1 apart."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_tokens, generator=generator).double()
    return perm + 0.1 * torch.rand(num_tokens, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------- hard_topk_indices


@pytest.mark.parametrize("num_tokens,k", [(1, 1), (10, 3), (57, 57), (200, 20)])
def test_hard_topk_matches_brute_force_sort(num_tokens, k):
    scores = torch.randn(num_tokens, generator=torch.Generator().manual_seed(num_tokens))
    indices = hard_topk_indices(scores, k)
    assert indices.dtype == torch.int64
    assert indices.tolist() == _brute_force_topk(scores.tolist(), k)
    assert torch.all(indices[1:] > indices[:-1])


def test_hard_topk_ties_break_towards_earlier_positions():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 3.0])
    assert hard_topk_indices(scores, 2).tolist() == [1, 2]
    assert hard_topk_indices(scores, 3).tolist() == [1, 2, 4]
    assert hard_topk_indices(torch.zeros(8), 3).tolist() == [0, 1, 2]
    repeated = torch.randint(0, 3, (100,), generator=torch.Generator().manual_seed(0)).float()
    first = hard_topk_indices(repeated, 40)
    assert first.tolist() == _brute_force_topk(repeated.tolist(), 40)
    assert torch.equal(first, hard_topk_indices(repeated.clone(), 40))


@pytest.mark.parametrize("k", [0, -1, 6])
def test_hard_topk_rejects_bad_k(k):
    with pytest.raises(ValueError):
        hard_topk_indices(torch.randn(5), k)


@pytest.mark.parametrize("shape", [(), (2, 5), (1, 1, 5)])
def test_hard_topk_rejects_non_1d_scores(shape):
    with pytest.raises(ValueError):
        hard_topk_indices(torch.randn(shape), 1)


# ---------------------------------------------------------------- differentiable_topk


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "batch,num_tokens,k", [((), 5, 1), ((), 64, 7), ((3,), 576, 64), ((2,), 2880, 320), ((2, 3), 10, 9)]
)
def test_differentiable_topk_sums_to_k(dtype, batch, num_tokens, k):
    generator = torch.Generator().manual_seed(num_tokens)
    scores = 3 * torch.randn(*batch, num_tokens, generator=generator, dtype=dtype)
    mask = differentiable_topk(scores, k)
    assert mask.shape == scores.shape and mask.dtype == dtype
    assert torch.all((mask >= 0) & (mask <= 1))
    torch.testing.assert_close(mask.sum(-1), torch.full(batch, float(k), dtype=dtype), atol=1e-4, rtol=0)


def test_differentiable_topk_matches_reference_bisection():
    scores = torch.randn(4, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    budgets = torch.tensor([1.0, 5.0, 12.5, 29.0], dtype=torch.float64)
    mask = differentiable_topk(scores, budgets)
    for row, row_mask, budget in zip(scores, mask, budgets.tolist(), strict=True):
        torch.testing.assert_close(row_mask, _reference_mask(row, budget), atol=1e-9, rtol=0)


def test_differentiable_topk_per_row_budget_and_full_budget():
    scores = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    budgets = torch.tensor([2, 8, 5])
    mask = differentiable_topk(scores, budgets)
    torch.testing.assert_close(mask.sum(-1), budgets.double(), atol=1e-9, rtol=0)
    assert torch.equal(mask[1], torch.ones(8, dtype=torch.float64))
    mask[1].sum().backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


def test_differentiable_topk_equal_scores_give_uniform_mask():
    mask = differentiable_topk(torch.full((2, 10), 4.2), 3)
    torch.testing.assert_close(mask, torch.full((2, 10), 0.3), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "k,error",
    [(0, ValueError), (11, ValueError), (-2, ValueError), (torch.tensor([1, 0]), ValueError), (2.5, TypeError)],
)
def test_differentiable_topk_rejects_bad_k(k, error):
    with pytest.raises(error):
        differentiable_topk(torch.randn(2, 10), k)


def test_differentiable_topk_rejects_bad_inputs():
    with pytest.raises(ValueError):
        differentiable_topk(torch.randn(2, 10), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError):
        differentiable_topk(torch.arange(10), 3)
    with pytest.raises(ValueError):
        differentiable_topk(torch.tensor(1.0), 1)


@pytest.mark.parametrize("seed", range(3))
def test_differentiable_topk_gradcheck(seed):
    scores = torch.randn(7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: differentiable_topk(s, 3), (scores,))
    assert torch.autograd.gradgradcheck(lambda s: differentiable_topk(s, 3), (scores,))
    batched = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: differentiable_topk(s, torch.tensor([2, 4])), (batched,))


def test_differentiable_topk_gradient_matches_finite_difference_of_reference():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(9, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(9, generator=generator, dtype=torch.float64)
    k, step = 4, 1e-5

    def reference_loss(values: torch.Tensor) -> float:
        mask = _reference_mask(values, k)
        return (weights * mask).sum().item() + 0.5 * (mask**2).sum().item()

    mask = differentiable_topk(scores, k)
    ((weights * mask).sum() + 0.5 * (mask**2).sum()).backward()
    numeric = torch.empty(9, dtype=torch.float64)
    for j in range(9):
        bump = torch.zeros(9, dtype=torch.float64)
        bump[j] = step
        base = scores.detach()
        numeric[j] = (reference_loss(base + bump) - reference_loss(base - bump)) / (2 * step)
    torch.testing.assert_close(scores.grad, numeric, atol=1e-7, rtol=1e-6)


def test_differentiable_topk_is_monotone():
    generator = torch.Generator().manual_seed(4)
    scores = torch.randn(3, 20, generator=generator, dtype=torch.float64)
    mask = differentiable_topk(scores, 6)
    for row_scores, row_mask in zip(scores, mask, strict=True):
        ordered = row_mask[torch.argsort(row_scores)]
        assert torch.all(ordered[1:] > ordered[:-1])
    for i in range(20):
        raised = scores.clone()
        raised[:, i] += 0.7
        new_mask = differentiable_topk(raised, 6)
        assert torch.all(new_mask[:, i] >= mask[:, i])
        others = torch.arange(20) != i
        assert torch.all(new_mask[:, others] <= mask[:, others] + 1e-12)


@pytest.mark.parametrize("dtype,shift,atol", [(torch.float32, 7.5, 1e-5), (torch.float64, -1234.5, 1e-9)])
def test_differentiable_topk_shift_invariant(dtype, shift, atol):
    scores = torch.randn(2, 40, generator=torch.Generator().manual_seed(5), dtype=dtype)
    torch.testing.assert_close(
        differentiable_topk(scores + shift, 9), differentiable_topk(scores, 9), atol=atol, rtol=0
    )


@pytest.mark.parametrize("seed", range(3))
def test_differentiable_topk_approaches_hard_topk_when_scores_are_scaled(seed):
    scores = _separated_scores(25, seed)
    k = 8
    hard = _hard_indicator(scores, k)
    errors = [(differentiable_topk(scale * scores, k) - hard).abs().max().item() for scale in (0.3, 1, 10, 100)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False))
    # With gaps of at least 0.9 scaled by 100, every token is >= 45 logits from the threshold.
    assert errors[-1] < 25 * math.exp(-40)
    mask32 = differentiable_topk(100 * scores.float(), k)
    torch.testing.assert_close(mask32, hard.float(), atol=1e-6, rtol=0)
    assert hard_topk_indices(mask32, k).tolist() == _brute_force_topk(scores.tolist(), k)


def test_differentiable_topk_half_precision_is_cast_back():
    scores = torch.randn(2, 50, generator=torch.Generator().manual_seed(6)).bfloat16().requires_grad_()
    mask = differentiable_topk(scores, 10)
    assert mask.dtype == torch.bfloat16
    torch.testing.assert_close(mask.float().sum(-1), torch.full((2,), 10.0), atol=0.2, rtol=0)
    mask.float().pow(2).sum().backward()
    assert scores.grad is not None and scores.grad.dtype == torch.bfloat16


# ---------------------------------------------------------------- zscore and soft_topk


def test_zscore_matches_definition():
    scores = torch.randn(3, 11, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rows = []
    for row in scores.tolist():
        mean = sum(row) / len(row)
        var = sum((x - mean) ** 2 for x in row) / len(row)
        rows.append([(x - mean) / math.sqrt(var + 1e-6) for x in row])
    torch.testing.assert_close(zscore(scores), torch.tensor(rows, dtype=torch.float64))
    assert torch.equal(zscore(torch.full((4,), 3.0)), torch.zeros(4))


@pytest.mark.parametrize(
    "batch,num_tokens,k,temperature", [((), 16, 4, 1.0), ((4,), 576, 64, 0.1), ((2,), 100, 1, 2.0)]
)
def test_soft_topk_sums_to_k(batch, num_tokens, k, temperature):
    scores = torch.randn(*batch, num_tokens, generator=torch.Generator().manual_seed(8))
    mask = soft_topk(scores, k, temperature=temperature)
    assert mask.shape == scores.shape
    assert torch.all((mask >= 0) & (mask <= 1))
    torch.testing.assert_close(mask.sum(-1), torch.full(batch, float(k)), atol=1e-4, rtol=0)


def test_soft_topk_is_differentiable_topk_of_zscored_scores():
    scores = torch.randn(2, 30, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mask = soft_topk(scores, 7, temperature=0.3)
    for row, row_mask in zip(scores, mask, strict=True):
        torch.testing.assert_close(row_mask, _reference_mask(zscore(row) / 0.3, 7), atol=1e-9, rtol=0)


@pytest.mark.parametrize("shift,scale", [(10.0, 1.0), (0.0, 37.0), (-5.0, 0.5), (3.0, 1e3)])
def test_soft_topk_invariant_to_shift_and_positive_scale(shift, scale):
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    expected = soft_topk(scores, 12, temperature=0.5)
    torch.testing.assert_close(soft_topk(scale * scores + shift, 12, temperature=0.5), expected, atol=1e-5, rtol=0)


def test_soft_topk_is_monotone():
    scores = torch.randn(30, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    mask = soft_topk(scores, 10, temperature=0.5)
    ordered = mask[torch.argsort(scores)]
    assert torch.all(ordered[1:] > ordered[:-1])
    for i in range(30):
        raised = scores.clone()
        raised[i] += 0.4
        assert soft_topk(raised, 10, temperature=0.5)[i] >= mask[i]


@pytest.mark.parametrize("seed", range(3))
def test_soft_topk_lower_temperature_is_closer_to_hard_topk(seed):
    scores = _separated_scores(40, seed)
    hard = _hard_indicator(scores, 10)
    temperatures = (2.0, 1.0, 0.3, 0.1, 0.01, 0.001)
    errors = [(soft_topk(scores, 10, temperature=t) - hard).abs().sum().item() for t in temperatures]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False))
    # z-scored neighbours are >= 0.9 / std(0..39) ~ 0.078 apart, i.e. >= 78 logits at tau = 0.001.
    assert errors[-1] < 1e-9


@pytest.mark.parametrize("seed", range(2))
def test_soft_topk_gradcheck(seed):
    scores = torch.randn(7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, 3, temperature=0.5), (scores,))
    batched = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, 2, temperature=2.0), (batched,))


def test_soft_topk_rejects_bad_temperature():
    with pytest.raises(ValueError):
        soft_topk(torch.randn(10), 3, temperature=0.0)


# ---------------------------------------------------------------- gumbel_keep_mask


def test_gumbel_keep_mask_values_and_shape():
    logits = 3 * torch.randn(4, 50, 2, generator=torch.Generator().manual_seed(12))
    keep = gumbel_keep_mask(logits, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (4, 50)
    assert torch.all((keep >= 0) & (keep <= 1))


def test_gumbel_keep_mask_reproducible_with_generator():
    logits = torch.randn(100, 2, generator=torch.Generator().manual_seed(13))
    first = gumbel_keep_mask(logits, generator=torch.Generator().manual_seed(42))
    second = gumbel_keep_mask(logits, generator=torch.Generator().manual_seed(42))
    other = gumbel_keep_mask(logits, generator=torch.Generator().manual_seed(43))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_gumbel_keep_mask_hard_is_binary_straight_through():
    logits = torch.randn(200, 2, generator=torch.Generator().manual_seed(14), requires_grad=True)
    soft = gumbel_keep_mask(logits, temperature=0.5, generator=torch.Generator().manual_seed(1))
    hard = gumbel_keep_mask(logits, temperature=0.5, hard=True, generator=torch.Generator().manual_seed(1))
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    # Same noise, so the hard sample is the argmax of the soft one.
    assert torch.equal(hard.detach(), (soft.detach() > 0.5).float())
    weights = torch.randn(200, generator=torch.Generator().manual_seed(15))
    (weights * hard).sum().backward()
    hard_grad = logits.grad.clone()
    assert hard_grad.abs().sum() > 0
    logits.grad = None
    (weights * soft).sum().backward()
    torch.testing.assert_close(hard_grad, logits.grad)


def test_gumbel_keep_mask_saturates_for_extreme_logits():
    generator = torch.Generator().manual_seed(16)
    keep_wins = torch.tensor([-40.0, 40.0]).expand(500, 2)
    drop_wins = torch.tensor([40.0, -40.0]).expand(500, 2)
    assert torch.all(gumbel_keep_mask(keep_wins, generator=generator) > 1 - 1e-6)
    assert torch.all(gumbel_keep_mask(drop_wins, generator=generator) < 1e-6)
    assert torch.all(gumbel_keep_mask(keep_wins, hard=True, generator=generator) == 1)
    assert torch.all(gumbel_keep_mask(drop_wins, hard=True, generator=generator) == 0)


def test_gumbel_keep_mask_hard_samples_follow_softmax_probability():
    # Gumbel-max: P(keep wins) = softmax(logits)[keep] = sigmoid(keep - drop), for any temperature.
    logits = torch.tensor([[0.3, 1.1], [2.0, -0.5], [0.0, 0.0]]).expand(20000, 3, 2)
    hard = gumbel_keep_mask(logits, temperature=0.3, hard=True, generator=torch.Generator().manual_seed(17))
    expected = torch.sigmoid(logits[0, :, 1] - logits[0, :, 0])
    torch.testing.assert_close(hard.mean(0), expected, atol=0.015, rtol=0)


@pytest.mark.parametrize("shape", [(10,), (4, 3), (2, 5, 1)])
def test_gumbel_keep_mask_rejects_wrong_class_dim(shape):
    with pytest.raises(ValueError):
        gumbel_keep_mask(torch.randn(shape))
