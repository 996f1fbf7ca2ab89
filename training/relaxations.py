"""Differentiable relaxations of top-k used by the training recipes (never part of the deployed graph).

- `differentiable_topk` (VisionSelector, Sec. 3.3 / Algorithm 1): sigmoid(s + t) with the threshold t solved
  by bisection (plus one Newton step) so the mask sums to k; the backward pass is the implicit-function
  gradient.
- `soft_topk` (DiffPrune / AutoSelect, Eq. 4): the same budgeted map applied to z-scored scores divided by a
  temperature.
- `gumbel_keep_mask` (reconstruction selector): a two-class Gumbel-Softmax keep/drop head.

The inference-time `hard_topk_indices` is remote code, in `modeling/selection_ops.py`.
"""

from __future__ import annotations

import torch


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    # The bisection needs more mantissa than half precision has to hit the budget.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _budget_tensor(k: int | torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Validate k against scores: (..., N) and return it as a (..., 1) tensor of the scores' dtype."""
    num_tokens = scores.shape[-1]
    batch_shape = scores.shape[:-1]
    if isinstance(k, torch.Tensor):
        if k.is_complex() or k.dtype == torch.bool:
            raise TypeError(f"`k` must be a real tensor, got dtype {k.dtype}")
        if k.ndim != 0 and k.shape != batch_shape:
            raise ValueError(
                f"a tensor `k` must be 0-d or have the batch shape {tuple(batch_shape)}, got {tuple(k.shape)}"
            )
        budget = k.detach().to(device=scores.device, dtype=scores.dtype).expand(batch_shape)
        if not bool(((budget > 0) & (budget <= num_tokens)).all()):
            raise ValueError(f"every `k` must be in (0, {num_tokens}], got {k}")
        return budget.unsqueeze(-1)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"`k` must be an int or a tensor, got {type(k).__name__}")
    if not 0 < k <= num_tokens:
        raise ValueError(f"`k` must be in (0, {num_tokens}], got {k}")
    return torch.full((*batch_shape, 1), float(k), dtype=scores.dtype, device=scores.device)


def _bisect_threshold(scores: torch.Tensor, k: torch.Tensor, tolerance: float, max_iter: int) -> torch.Tensor:
    """Solve sum_i sigmoid(s_i + t) = k for t, per row.

    scores: (..., N), k: (..., 1) with 0 < k < N -> t: (..., 1).
    """
    num_tokens = scores.shape[-1]
    logit_ratio = torch.log(k) - torch.log(num_tokens - k)
    # With t = logit(k/N) - max(s) every s_i + t <= logit(k/N), so every term is <= k/N and the sum is <= k;
    # symmetrically t = logit(k/N) - min(s) gives a sum >= k. The sum is increasing in t, so the root lies
    # between them for any scores and budget (the interval is a single point when all scores are equal).
    lower = logit_ratio - scores.amax(dim=-1, keepdim=True)
    upper = logit_ratio - scores.amin(dim=-1, keepdim=True)
    for step in range(max_iter):
        mid = (lower + upper) / 2
        probs = torch.sigmoid(scores + mid)
        total = probs.sum(dim=-1, keepdim=True)
        # `.all()` waits for the device, so convergence is only polled every few halvings.
        if step % 4 == 3 and bool(((total - k).abs() <= tolerance).all()):
            break
        below = total < k
        lower = torch.where(below, mid, lower)
        upper = torch.where(below, upper, mid)
    # One Newton step from the last midpoint squares the remaining error, so the mask is smooth in the
    # scores down to rounding level (finite differences then agree with the implicit gradient); clamping
    # to the bracket, which still holds both the midpoint and the root, guards against a flat sum.
    slope_sum = (probs * (1 - probs)).sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return torch.clamp(mid + (k - total) / slope_sum, lower, upper)


class DifferentiableTopK(torch.autograd.Function):
    """mask = sigmoid(s + t(s)) with sum(mask) = k per row; gradients by implicit differentiation.

    forward(scores: (..., N), k: (..., 1), tolerance, max_iter) -> mask: (..., N). Rows whose budget is
    k == N return exactly 1 everywhere (no finite threshold exists) and pass zero gradient. `k` is treated
    as a constant. The forward pass runs without autograd (inside `Function.forward`), so no graph is built
    through the bisection. The backward pass is written with differentiable ops on the saved mask, so
    double backward is also correct.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        scores: torch.Tensor,
        k: torch.Tensor,
        tolerance: float,
        max_iter: int,
    ) -> torch.Tensor:
        num_tokens = scores.shape[-1]
        full = k >= num_tokens
        solvable_k = torch.where(full, torch.full_like(k, num_tokens / 2), k)
        threshold = _bisect_threshold(scores, solvable_k, tolerance, max_iter)
        mask = torch.where(full, torch.ones_like(scores), torch.sigmoid(scores + threshold))
        ctx.save_for_backward(mask)
        return mask

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_mask: torch.Tensor):
        (mask,) = ctx.saved_tensors
        slope = mask * (1 - mask)
        slope_sum = slope.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(slope.dtype).tiny)
        # Eq. 8, implicit-function gradient: dt/ds_j = -v_j / sum_i v_i with v = sigmoid'(s + t), so the
        # upstream gradient is centred by its v-weighted mean before gating by v.
        weighted_mean = (slope * grad_mask).sum(dim=-1, keepdim=True) / slope_sum
        return slope * (grad_mask - weighted_mean), None, None, None


def differentiable_topk(
    scores: torch.Tensor,
    k: int | torch.Tensor,
    tolerance: float = 1e-6,
    max_iter: int = 100,
) -> torch.Tensor:
    """Differentiable Top-K of VisionSelector (Sec. 3.3, Algorithm 1): a soft mask that sums to k.

    mask_i = sigmoid(s_i + t), with one threshold t per row found by bisection so that sum_i mask_i = k.
    The mask keeps the order of the scores (Eq. 4), is invariant to adding a constant to a row, and tends
    to the hard top-k indicator as the gaps between scores grow. Gradients come from implicit
    differentiation of the constraint (Eq. 5-8), never from the search.

    scores: (N,) or (B, N) (any leading batch dims work), finite. Half-precision scores are computed in
        float32 and the mask is cast back to their dtype.
    k: int, or a tensor that is 0-d or has the batch shape (e.g. (B,)), one budget per row. Each budget
        must satisfy 0 < k <= N and may be fractional. k == N returns a mask of exactly 1 with zero
        gradient. k gets no gradient.
    tolerance: the bisection stops once every row has |sum(mask) - k| <= tolerance (polled every 4 steps);
        a final Newton step then refines t. In float32 with N in the thousands, rounding alone leaves the
        sum off by up to ~1e-4.
    max_iter: at most this many bisection steps (each halves the bracket, which starts as wide as the score
        range).

    Returns mask: same shape as scores, values in [0, 1].
    """
    if not scores.is_floating_point():
        raise TypeError(f"`scores` must be a floating-point tensor, got dtype {scores.dtype}")
    if scores.ndim == 0:
        raise ValueError("`scores` must have at least one dimension (N,)")
    if tolerance < 0:
        raise ValueError(f"`tolerance` must be >= 0, got {tolerance}")
    if max_iter < 1:
        raise ValueError(f"`max_iter` must be >= 1, got {max_iter}")
    working = scores.to(_working_dtype(scores.dtype))
    budget = _budget_tensor(k, working)
    mask = DifferentiableTopK.apply(working, budget, tolerance, max_iter)
    return mask.to(scores.dtype)


def zscore(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Standardise each row to zero mean and unit (population) variance.

    scores: (..., N) -> (..., N). Divides by sqrt(var + eps) rather than std + eps so that constant rows
    map to 0 with a finite gradient.
    """
    mean = scores.mean(dim=-1, keepdim=True)
    var = scores.var(dim=-1, keepdim=True, correction=0)
    return (scores - mean) * torch.rsqrt(var + eps)


def soft_topk(
    scores: torch.Tensor,
    k: int | torch.Tensor,
    temperature: float = 1.0,
    tolerance: float = 1e-6,
    max_iter: int = 100,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Budgeted Soft Top-K with temperature of DiffPrune / AutoSelect: a soft mask in [0, 1] that sums to k.

    What the papers say: DiffPrune (Eq. 4) writes alpha = Phi_K(s / tau) in [0, 1]^N with sum_i alpha_i = K,
    citing LapSum for Phi_K, and anneals tau from 2.0 to 0.1 on a cosine schedule; AutoSelect (Eq. 4)
    z-score normalises the raw scores first, alpha = Phi_K(s_hat / tau), citing Su (2024). Neither paper
    writes out Phi_K beyond "smooth, temperature-scaled, sums to K, tends to hard top-K as tau -> 0".

    What this implements: alpha = sigmoid(zscore(s) / tau + t), with the per-row threshold t found by
    bisection so that sum_i alpha_i = k, i.e. `differentiable_topk(zscore(s) / tau, k)`. Autograd runs
    through the z-score and the division, and the implicit-function gradient handles t. Because of the
    z-score the mask is invariant to adding a constant to and to positively rescaling a row (up to eps).

    scores: (N,) or (B, N) (any leading batch dims work). k, tolerance, max_iter: as in
        `differentiable_topk`.
    temperature: tau > 0; lower is closer to the hard top-k indicator.
    eps: added to the variance in `zscore`.

    Returns mask: same shape and dtype as scores.
    """
    if not scores.is_floating_point():
        raise TypeError(f"`scores` must be a floating-point tensor, got dtype {scores.dtype}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    working = scores.to(_working_dtype(scores.dtype))
    mask = differentiable_topk(zscore(working, eps) / temperature, k, tolerance=tolerance, max_iter=max_iter)
    return mask.to(scores.dtype)


def gumbel_keep_mask(
    keep_logits: torch.Tensor,
    temperature: float = 1.0,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gumbel-Softmax keep/drop head of the reconstruction selector (Jang et al., 2017).

    keep_logits: (..., N, 2), class 0 = drop, class 1 = keep. A Gumbel(0, 1) sample is added to each logit
    and the softmax over the two classes at `temperature` gives the keep probability.
    hard: straight-through; the forward value is exactly 1 where keep beats drop after the noise (ties
    count as drop) and 0 elsewhere, while the gradient is that of the soft keep probability.
    generator: source of the Gumbel noise, for reproducible samples.

    Returns keep: (..., N) in the logits' dtype, values in [0, 1].
    """
    if keep_logits.ndim < 1 or keep_logits.shape[-1] != 2:
        raise ValueError(f"`keep_logits` must have shape (..., N, 2), got {tuple(keep_logits.shape)}")
    if not keep_logits.is_floating_point():
        raise TypeError(f"`keep_logits` must be a floating-point tensor, got dtype {keep_logits.dtype}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    dtype = _working_dtype(keep_logits.dtype)
    logits = keep_logits.to(dtype)
    # F.gumbel_softmax takes no generator, so the Gumbel(0, 1) noise -log(Exp(1)) is drawn here.
    exponential = torch.empty(logits.shape, dtype=dtype, device=logits.device).exponential_(generator=generator)
    perturbed = logits - torch.log(exponential.clamp_min(torch.finfo(dtype).tiny))
    soft = torch.softmax(perturbed / temperature, dim=-1)[..., 1]
    if not hard:
        return soft.to(keep_logits.dtype)
    hard_keep = (perturbed[..., 1] > perturbed[..., 0]).to(dtype)
    # Adding an exact zero keeps the forward value exactly 0/1 while routing the gradient through `soft`.
    return (hard_keep + (soft - soft.detach())).to(keep_logits.dtype)
