"""The recipe base class and the open recipe registry.

A recipe is how one learned method trains: the loss, the train-only modules (denoiser, reconstructor) and the
schedules. Each built-in lives in `training/methods/<method>.py` with its argument dataclass and registers with
`register_recipe(name, arguments_cls, recipe_cls)`; third parties do the same for their own methods.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import TrainingArguments

from ..modeling.pruning import (
    TokenPruningMixin,
    placed_side_inputs,
    prompt_embeds_by_row,
    selection_units,
    tokens_to_keep,
)
from ..modeling.token_selectors import learned_selectors
from .callbacks import Schedule


class MetricSum:
    """Running means of per-image quantities within one forward call."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: total / self.counts[name] for name, total in self.sums.items()}


def polarization(mask: torch.Tensor) -> torch.Tensor:
    """mean |2m - 1|: 0 when every weight is 0.5, 1 when the mask is binary."""
    return (2 * mask.detach().float() - 1).abs().mean()


class Recipe(nn.Module):
    """Base of the per-method recipes: the loss of one method, its train-only modules and its schedules.

    A recipe module lives in `training/methods/<method>.py` with its argument dataclass (a `RecipeArguments`)
    and registers both with `register_recipe`. Subclasses implement `segment_embeds` (the language-model
    recipes, whose loss is the frozen VLM's next-token loss plus an auxiliary term) or override `forward`, and
    declare their schedules in `schedules`; a `ScheduleCallback` per schedule sets the attribute before each step.
    """

    uses_language_model = True

    def __init__(self, model: TokenPruningMixin, args: TrainingArguments) -> None:
        super().__init__()
        self.args = args
        for schedule in self.schedules(args):
            setattr(self, schedule.attribute, schedule.start)

    def schedules(self, args: TrainingArguments) -> list[Schedule]:
        """The values this recipe anneals during training (none by default), read from `args`."""
        return []

    def segment_embeds(self, model, segment, num_keep: int, metrics: MetricSum) -> tuple[torch.Tensor, ...]:
        """-> (new embeds (N, llm_hidden) carrying the selector's gradient, auxiliary loss of this image[, key weights]).

        Key weights (N,) in [0, 1], when returned, scale the attention every query pays to these tokens: log(w) is
        added to the attention logits on their keys, so w = 0 is exactly the token dropped (contract line 3).
        """
        raise NotImplementedError

    def forward(self, model: TokenPruningMixin, batch: dict[str, Any]) -> dict[str, Any]:
        return self.language_forward(model, batch)

    def language_forward(self, model: TokenPruningMixin, batch: dict[str, Any]) -> dict[str, Any]:
        """Frozen VLM forward on the full sequence with each image's tokens replaced by `segment_embeds`."""
        batch = dict(batch)
        input_ids = batch.pop("input_ids")
        attention_mask = batch.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        padding_mask = attention_mask
        labels = batch.pop("labels", None)
        if labels is None:
            raise ValueError("the batch has no `labels`: the language-model recipes need the answer tokens")
        vision_inputs, language_kwargs = model.split_vision_inputs(batch)
        selector = model.token_selector
        with torch.no_grad():
            placed = model.place_visual_segments(input_ids, vision_inputs, selector.feature_source == "vision_features")
            inputs_embeds = model.get_input_embeddings()(input_ids)
            # Per-token inputs the stock code takes from pixels alone (Qwen3-VL's DeepStack), at every visual token.
            side_inputs = placed_side_inputs(placed, input_ids)
        metrics = MetricSum()
        auxiliary = inputs_embeds.new_zeros(())
        if placed:
            placed = selection_units(placed, self.args.train_budget_scope)
            prompts = None
            if selector.uses_prompt:  # the selector reads its sample's prompt (`prompt_embeds_by_row`)
                prompts = prompt_embeds_by_row(inputs_embeds, attention_mask, model.visual_token_mask(input_ids))
            new_embeds, key_weights = [], []
            for segment, rows, _ in placed:
                prompt_input = {} if prompts is None else {"prompt_embeds": prompts[int(rows[0])]}
                embeds, aux, *weights = self.segment_embeds(
                    model, segment, tokens_to_keep(self.args.train_budget, rows.numel()), metrics, **prompt_input
                )
                new_embeds.append(embeds.to(inputs_embeds.dtype))
                key_weights.append(weights[0] if weights else None)
                auxiliary = auxiliary + aux / len(placed)
            rows = torch.cat([seg_rows for _, seg_rows, _ in placed])
            cols = torch.cat([seg_cols for _, _, seg_cols in placed])
            # Out of place, so autograd sees the selector's contribution.
            inputs_embeds = inputs_embeds.index_put((rows, cols), torch.cat(new_embeds))
            if any(weights is not None for weights in key_weights):
                ones = [torch.ones(len(seg_rows), device=rows.device) for _, seg_rows, _ in placed]
                weights = torch.cat([w if w is not None else one for w, one in zip(key_weights, ones, strict=True)])
                allowed = model.prune_hooks.attention_allowed(model, attention_mask, language_kwargs)
                attention_mask = key_weighted_mask(allowed, attention_mask, rows, cols, weights, inputs_embeds.dtype)
        position_ids = model.prune_hooks.position_ids(model, input_ids, padding_mask, vision_inputs)
        with model.feeding_side_inputs(model.visual_token_mask(input_ids), side_inputs):
            outputs = model.base_forward(
                input_ids=None,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels,
                **language_kwargs,
            )
        task_loss = outputs.loss
        loss = task_loss + auxiliary
        values = {"task_loss": float(task_loss.detach()), **self.schedule_values(), **metrics.means()}
        return {"loss": loss, "metrics": values}

    def schedule_values(self) -> dict[str, float]:
        return {schedule.attribute: float(getattr(self, schedule.attribute)) for schedule in self.schedules(self.args)}


def key_weighted_mask(
    allowed: torch.Tensor | dict[str, torch.Tensor],
    padding_mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    weights: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """A 4-D additive attention mask (B, 1, L, L): the stock mask's `allowed` keys (the architecture's
    `attention_allowed`), plus log(w) on the keys at (rows, cols); transformers passes a 4-D mask through unchanged,
    to eager and sdpa alike. A dict of `allowed` per layer type gives a dict of masks.

    allowed: (B, L, L) bool or {layer type: (B, L, L)}; padding_mask: (B, L) 1 for real tokens; weights: (n,) in
    [0, 1] for the n keys at (rows, cols).
    """
    batch, length = padding_mask.shape
    lowest = torch.finfo(dtype).min
    log_weights = padding_mask.new_zeros((batch, length), dtype=torch.float32)
    # Clamped so that w = 0 gives a finite, fully masking bias (a row of -inf would make NaN).
    log_weights = log_weights.index_put((rows, cols), weights.float().clamp_min(torch.finfo(torch.float32).tiny).log())
    bias = log_weights[:, None, :].clamp_min(lowest)
    if isinstance(allowed, dict):
        return {name: bias.masked_fill(~keys, lowest)[:, None].to(dtype) for name, keys in allowed.items()}
    return bias.masked_fill(~allowed, lowest)[:, None].to(dtype)


def check_non_negative(value: Any, name: str) -> None:
    """Raise ValueError naming `name` unless `value` is a finite number >= 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")


def check_positive(value: Any, name: str) -> None:
    """Raise ValueError naming `name` unless `value` is a finite number > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")


def check_fraction(value: Any, name: str) -> None:
    """Raise ValueError naming `name` unless `value` is a number in (0, 1]."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1):
        raise ValueError(f"`{name}` must be a number in (0, 1], got {value!r}")


@dataclass
class RecipeArguments:
    """Base of a recipe's argument dataclass: a mixin of `TrainingArguments`.

    `TokenPruneTrainingArguments` composes the built-in recipes' arguments; `training_arguments_class()` adds those
    of recipes registered later. Every field needs a default and `metadata={"help": ...}`; subclasses validate
    their fields in `__post_init__` (naming the field and its range) and then call `super().__post_init__()`.
    """

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


class RegisteredRecipe(NamedTuple):
    """One recipe registry entry."""

    arguments_cls: type[RecipeArguments]
    recipe_cls: type[Recipe]


_RECIPES: dict[str, RegisteredRecipe] = {}


def register_recipe(
    name: str, arguments_cls: type[RecipeArguments], recipe_cls: type[Recipe], *, overwrite: bool = False
) -> None:
    """Register how the learned selector `name` trains: its argument dataclass and its `Recipe`.

    `name` must be a learned selector already registered with `register_selector`. Raises ValueError on a name already registered
    unless `overwrite=True`.
    """
    if name not in learned_selectors():
        raise ValueError(f"`name` {name!r} must be a registered learned selector, one of {learned_selectors()}")
    if not (dataclasses.is_dataclass(arguments_cls) and issubclass(arguments_cls, RecipeArguments)):
        raise TypeError(f"`arguments_cls` must be a RecipeArguments dataclass, got {arguments_cls!r}")
    if not (isinstance(recipe_cls, type) and issubclass(recipe_cls, Recipe)):
        raise TypeError(f"`recipe_cls` must be a Recipe subclass, got {recipe_cls!r}")
    if name in _RECIPES and not overwrite:
        raise ValueError(
            f"a recipe named {name!r} is already registered ({_RECIPES[name].recipe_cls.__name__}); "
            "pass overwrite=True to replace it"
        )
    _RECIPES[name] = RegisteredRecipe(arguments_cls, recipe_cls)


def get_recipe(name: str | None, argument: str = "method") -> RegisteredRecipe:
    """The registered recipe of `name`; raises ValueError naming `argument` and the trainable methods."""
    if name not in _RECIPES:
        raise ValueError(
            f"`{argument}` must be a learned selector with a training recipe, one of {registered_recipes()}; "
            f"got {name!r}"
        )
    return _RECIPES[name]


def registered_recipes() -> list[str]:
    """Methods that can be trained, sorted."""
    return sorted(_RECIPES)
