"""`TokenPruneTrainingModel`: what the `Trainer` trains, a frozen pruned VLM plus its method's recipe.

It freezes every base parameter, keeps the selector trainable, and owns the recipe's train-only modules. The
selector and those modules hold float32 weights (so the optimizer keeps float32 state) whatever the frozen VLM's
dtype; the recipes cast at the boundary between the two. Its
`forward(**batch)` returns `{"loss", "metrics"}`, so the stock `Trainer` loop, DDP (`accelerate launch`) and
gradient accumulation work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments

from ..modeling.pruning import TokenPruningMixin
from . import methods  # noqa: F401  (importing the package registers the built-in recipes)
from .recipe import get_recipe

TRAINABLE_DTYPE = torch.float32  # of the selector and the train-only modules, whatever the VLM's dtype


class TokenPruneTrainingModel(nn.Module):
    """What the `Trainer` trains: a pruned VLM whose base is frozen, plus the recipe's train-only modules.

    Attributes:
        model: the pruned VLM (shared, not copied); only `model.token_selector` trains.
        recipe: the method's `Recipe` (holds the denoiser / reconstructor and the schedule values).
    """

    def __init__(self, model: TokenPruningMixin, args: TrainingArguments) -> None:
        super().__init__()
        if not isinstance(model, TokenPruningMixin):
            raise TypeError(
                f"`model` must be a pruned model from hf_tokenprune.get_pruned_model, got {type(model).__name__}"
            )
        config = model.token_prune_config
        method = config.method if config is not None else None
        entry = get_recipe(method, argument="the model's selector method")
        if model.token_selector is None:
            raise ValueError(f"the model's {method!r} selector has no weights to train")
        if not isinstance(args, entry.arguments_cls):
            raise TypeError(
                f"the {method!r} recipe reads {entry.arguments_cls.__name__}, which `args` "
                f"({type(args).__name__}) does not include; build it with `training_arguments_class()`"
            )
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        # A bf16 selector has no float32 master copy in the Trainer: AdamW steps below the bf16 spacing of a
        # weight are lost, so small learning rates and every schedule's tail would not train.
        model.token_selector.to(dtype=TRAINABLE_DTYPE).requires_grad_(True)
        self.model = model
        reference = next(model.token_selector.parameters())
        self.recipe = entry.recipe_cls(model, args).to(device=reference.device, dtype=TRAINABLE_DTYPE)

    def forward(self, **batch) -> dict[str, Any]:
        return self.recipe(self.model, batch)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor, keyed as in this module: `model.token_selector.*` and `recipe.*`."""
        return {name: tensor.detach() for name, tensor in self.named_parameters() if tensor.requires_grad}

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """Checkpoint the frozen VLM's layers (called by `Trainer` for `activation_checkpointing=True`)."""
        self.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs
        )

    # The deprecated name, for `TrainingArguments(gradient_checkpointing=True)` code paths.
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)
