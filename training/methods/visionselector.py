"""How `visionselector` trains (paper 000, Sec. 3.3-3.4): its arguments, recipe and schedule.

Per image, with k = tokens kept at `train_budget`: m = DifferentiableTopK(s, k) weights the visual tokens: by default
log m is added to the attention logits on their keys (m = 0 is a drop); `soft_mask_mode="multiply"` multiplies the
projector output by m as the paper does. The LLM sees every token. loss = CE + lambda_t * BCE(m, hard top-k), lambda_t linear from `lambda_start` to
`lambda_end` over the run (Eq. 12).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...modeling.selection_ops import hard_topk_indices
from ..callbacks import Schedule, linear_schedule
from ..recipe import (
    Recipe,
    RecipeArguments,
    check_fraction,
    check_non_negative,
    polarization,
    register_recipe,
)
from ..relaxations import differentiable_topk

SOFT_MASK_MODES = ("attention_bias", "multiply")


@dataclass
class VisionSelectorArguments(RecipeArguments):
    """Arguments of the `visionselector` recipe.

    Fields:
        lambda_start: BCE constraint weight at step 0.
        lambda_end: BCE constraint weight at the end of the ramp.
        soft_mask_mode: "attention_bias" (log m on the visual tokens' attention keys) or "multiply" (m * V, Eq. 8).
        lambda_anneal_fraction: share of the run the linear ramp takes (paper 000 Eq. 12: the whole run), then held.
    """

    lambda_start: float = field(
        default=0.1, metadata={"help": "visionselector: BCE constraint weight at step 0 (paper 000 Eq. 12: 0.1)."}
    )
    lambda_end: float = field(
        default=2.0,
        metadata={"help": "visionselector: BCE constraint weight at the last step (paper 000 Eq. 12: 2.0)."},
    )

    soft_mask_mode: str = field(
        default="attention_bias",
        metadata={
            "help": "visionselector: how the soft mask m acts in training: 'multiply' (paper 000: m * V, which the "
            "LLM's first RMSNorm largely undoes) or 'attention_bias' (log m added to the attention logits on the "
            "visual tokens' keys, so m = 0 is exactly a drop)."
        },
    )
    lambda_anneal_fraction: float = field(
        default=1.0,
        metadata={
            "help": "visionselector: share of the run lambda ramps over, then held at lambda_end (paper 000 Eq. 12: "
            "1.0), in (0, 1]."
        },
    )

    def __post_init__(self) -> None:
        check_fraction(self.lambda_anneal_fraction, "lambda_anneal_fraction")
        if self.soft_mask_mode not in SOFT_MASK_MODES:
            raise ValueError(f"`soft_mask_mode` must be one of {SOFT_MASK_MODES}, got {self.soft_mask_mode!r}")
        for name in ("lambda_start", "lambda_end"):
            check_non_negative(getattr(self, name), name)
        super().__post_init__()


class VisionSelectorRecipe(Recipe):
    """Paper 000, Sec. 3.3-3.4: Differentiable Top-K soft mask times the projector output; CE + lambda_t BCE."""

    def schedules(self, args: VisionSelectorArguments) -> list[Schedule]:
        fraction = float(args.lambda_anneal_fraction)
        return [Schedule("lambda_t", linear_schedule, args.lambda_start, args.lambda_end, fraction)]

    def segment_embeds(self, model, segment, num_keep, metrics):
        embeds = segment.embeds
        if num_keep >= embeds.shape[0]:
            return embeds, embeds.new_zeros(())
        selector = model.token_selector
        return self.soft_mask(embeds, selector.score(embeds.to(next(selector.parameters()).dtype)), num_keep, metrics)

    def soft_mask(self, embeds: torch.Tensor, scores: torch.Tensor, num_keep: int, metrics) -> tuple[torch.Tensor, ...]:
        """Paper 000's training step on one image's scores (N,): the Differentiable Top-K mask, its BCE constraint
        to the hard top-k, and the masked embeds (or the mask as key weights); returns what `segment_embeds` does."""
        size = embeds.shape[0]
        scores = scores.float()
        soft = differentiable_topk(scores, num_keep)
        hard = torch.zeros_like(soft)
        hard[hard_topk_indices(scores.detach(), num_keep)] = 1.0
        eps = torch.finfo(soft.dtype).eps
        constraint = F.binary_cross_entropy(soft.clamp(eps, 1 - eps), hard)
        metrics.add("constraint_loss", constraint)
        metrics.add("mask_mass", soft.detach().sum() / size)
        metrics.add("topk_mass", (soft.detach() * hard).sum() / num_keep)
        metrics.add("mask_polarization", polarization(soft))
        if self.args.soft_mask_mode == "attention_bias":
            return embeds, self.lambda_t * constraint, soft
        return soft[:, None].to(embeds.dtype) * embeds, self.lambda_t * constraint


register_recipe("visionselector", VisionSelectorArguments, VisionSelectorRecipe)
