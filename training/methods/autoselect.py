"""How `autoselect` trains (papers 002 and 004): its arguments, recipe, train-only denoiser and schedule.

Per image, with k = tokens kept at `train_budget`: alpha = SoftTopK(zscore(s) / tau, k); VP noise
x~ = sqrt(alpha) x + sqrt(1 - alpha) eps on the pre-projector features; a diagonal-attention denoiser; then the
frozen projector and LLM. loss = CE; tau is cosine-annealed from `tau_start` to `tau_end` over
`tau_anneal_steps` (default: half the run), then held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...modeling.selector_autoselect import TokenTransformer
from ..callbacks import Schedule, cosine_schedule
from ..recipe import Recipe, RecipeArguments, check_fraction, check_positive, polarization, register_recipe
from ..relaxations import soft_topk

VP_EPS = 1e-6


@dataclass
class AutoSelectArguments(RecipeArguments):
    """Arguments of the `autoselect` recipe.

    Fields:
        tau_start: Soft Top-K temperature at step 0.
        tau_end: temperature after annealing.
        tau_anneal_steps: steps of the cosine annealing, after which tau stays at `tau_end`; None = use
            `tau_anneal_fraction`.
        tau_anneal_fraction: the annealing's share of the run when `tau_anneal_steps` is None.
    """

    tau_start: float = field(
        default=2.0, metadata={"help": "autoselect: Soft Top-K temperature at step 0 (paper 002 A: 2.0)."}
    )
    tau_end: float = field(
        default=0.1, metadata={"help": "autoselect: Soft Top-K temperature after annealing (paper 002 A: 0.1)."}
    )
    tau_anneal_steps: int | None = field(
        default=None,
        metadata={
            "help": "autoselect: steps of the cosine annealing of tau, then held at tau_end (paper 002 A: 2000); "
            "None: tau_anneal_fraction of the run."
        },
    )
    tau_anneal_fraction: float = field(
        default=0.5,
        metadata={
            "help": "autoselect: share of the run tau anneals over when tau_anneal_steps is None (paper 002 A: "
            "2,000 of about 4,000 steps), in (0, 1]."
        },
    )

    def __post_init__(self) -> None:
        for name in ("tau_start", "tau_end"):
            check_positive(getattr(self, name), name)
        if self.tau_anneal_steps is not None and self.tau_anneal_steps < 1:
            raise ValueError(f"`tau_anneal_steps` must be an int >= 1 or None, got {self.tau_anneal_steps!r}")
        check_fraction(self.tau_anneal_fraction, "tau_anneal_fraction")
        super().__post_init__()


class DiagonalDenoiser(nn.Module):
    """Paper 002 Sec. 4.4: one Transformer block whose attention mask is the identity, so no token reads another.

    It works in a `hidden_size` space between two projections and adds its output to the throttled features;
    the output projection starts at zero, so at step 0 the frozen projector sees the throttled features
    unchanged. (The paper gives the block, not its width; a residual around in/out projections keeps it
    small on wide grouped features such as Qwen2.5-VL's 4 x 1280.)
    """

    def __init__(self, input_dim: int, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.block = TokenTransformer(input_dim, hidden_size, num_layers=1, num_heads=num_heads)
        self.output_proj = nn.Linear(hidden_size, input_dim)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> (N, input_dim)."""
        size = features.shape[0]
        # True = may not attend: everything but the diagonal.
        diagonal_only = ~torch.eye(size, dtype=torch.bool, device=features.device)
        hidden = self.block.input_proj(features.to(self.block.input_proj.weight.dtype)).unsqueeze(0)
        for layer in self.block.layers:
            hidden = layer(hidden, src_mask=diagonal_only)
        hidden = self.block.final_norm(hidden.squeeze(0))
        return features + self.output_proj(hidden).to(features.dtype)


def vp_noise(features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Paper 002 Eq. 5: sqrt(alpha) x + sqrt(1 - alpha) eps, per token.

    The paper assumes normalised tokens (eps ~ N(0, I)); pre-projector features here are not normalised
    (e.g. Qwen2.5-VL's merger input, before its RMSNorm), so eps is scaled by each token's RMS, which keeps
    Var(x~) = Var(x), the property the square roots are there for.
    """
    scale = features.detach().float().pow(2).mean(-1, keepdim=True).sqrt()
    noise = torch.randn_like(features, dtype=torch.float32) * scale
    # d sqrt(a) / da is infinite at a = 0 and d sqrt(1 - a) / da at a = 1, values a saturated Soft Top-K reaches.
    alpha = alpha[:, None].float().clamp(VP_EPS, 1 - VP_EPS)
    return (alpha.sqrt() * features.float() + (1 - alpha).sqrt() * noise).to(features.dtype)


class AutoSelectRecipe(Recipe):
    """Papers 002 / 004: z-scored logits / tau -> Soft Top-K -> VP noise -> diagonal denoiser -> frozen rest."""

    def __init__(self, model, args) -> None:
        super().__init__(model, args)
        selector = model.token_selector
        config = model.token_prune_config
        self.denoiser = DiagonalDenoiser(selector.input_dim, selector.hidden_size, config.scorer_num_heads)

    def schedules(self, args: AutoSelectArguments) -> list[Schedule]:
        total = args.tau_anneal_steps if args.tau_anneal_steps is not None else float(args.tau_anneal_fraction)
        return [Schedule("temperature", cosine_schedule, args.tau_start, args.tau_end, total)]

    def segment_embeds(self, model, segment, num_keep, metrics):
        selector = model.token_selector
        features = segment.features
        size = features.shape[0]
        dtype = next(selector.parameters()).dtype
        if num_keep >= size:
            alpha = features.new_ones(size, dtype=torch.float32)
        else:
            alpha = soft_topk(selector.score(features.to(dtype)).float(), num_keep, temperature=self.temperature)
        metrics.add("mask_mass", alpha.detach().sum() / size)
        metrics.add("mask_polarization", polarization(alpha))
        throttled = vp_noise(features.to(dtype), alpha)
        # Rows with no vision features (all zero: LLaVA-NeXT's row newlines) stay zero, so the projector hook
        # still recognises them.
        carries_features = (features != 0).any(dim=-1, keepdim=True)
        denoised = torch.where(carries_features, self.denoiser(throttled), throttled)
        embeds = model.prune_hooks.project_segment_features(model, segment, denoised.to(features.dtype))
        return embeds, embeds.new_zeros(())


register_recipe("autoselect", AutoSelectArguments, AutoSelectRecipe)
