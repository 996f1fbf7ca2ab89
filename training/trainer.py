"""`TokenPruneTrainer`: the stock `Trainer`, training only the selector of a frozen pruned VLM.

Checkpoints hold the trainable tensors only:

    token_prune_config.json        the model's TokenPruneConfig (method, sizes, base model)
    token_selector.safetensors     the selector, keyed as `model.token_selector.state_dict()`
    training_modules.safetensors   train-only recipe modules (denoiser / reconstructor), for resuming
    training_recipe.json           how the selector was trained: {name: JSON scalar} (`training_recipe`)

plus the Trainer's optimizer / scheduler / RNG / state files. `hf_tokenprune.get_pruned_model(base, dir)`
loads one back. Files are written under temporary names and renamed, the config last, so a checkpoint
with a config is complete.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers import Trainer, TrainingArguments

from ..model import load_selector_weights
from ..modeling.pruning import TokenPruningMixin
from ..modeling.repo_io import SELECTOR_WEIGHTS_NAME, TRAINING_RECIPE_NAME, replace_atomically
from .arguments import TokenPruneTrainingArguments
from .callbacks import recipe_callbacks
from .data import TokenPruneDataCollator
from .training_model import TokenPruneTrainingModel

TRAINING_MODULES_NAME = "training_modules.safetensors"
SELECTOR_PREFIX = "model.token_selector."

# Stock `TrainingArguments` fields a reader needs to reproduce a run (with `world_size`, a property).
RECIPE_STOCK_FIELDS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "data_seed",
    "bf16",
    "fp16",
)


def training_recipe(args: TokenPruneTrainingArguments, method: str, global_step: int) -> dict[str, Any]:
    """How a selector was trained, as a flat {name: JSON scalar} mapping (the `training_recipe.json` layout).

    Holds `method`, every field `TokenPruneTrainingArguments` adds to `TrainingArguments` (budget, schedules,
    regularisers), the stock fields in `RECIPE_STOCK_FIELDS`, `world_size`, `total_train_batch_size`
    (per device x accumulation x world size) and `global_step`.
    """
    stock = {field.name for field in dataclasses.fields(TrainingArguments)}
    added = [field.name for field in dataclasses.fields(args) if field.name not in stock]
    recipe: dict[str, Any] = {"method": method}
    for name in (*added, *RECIPE_STOCK_FIELDS):
        value = getattr(args, name)
        recipe[name] = value.value if isinstance(value, enum.Enum) else value  # e.g. SchedulerType.COSINE
    recipe["world_size"] = args.world_size
    recipe["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    )
    recipe["global_step"] = global_step
    for name, value in recipe.items():
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"training recipe field `{name}` is {type(value).__name__}, not a JSON scalar")
    return recipe


def atomic_write_json(data: dict[str, Any], path: Path) -> None:
    """JSON under a temporary name, then rename: a reader never sees half a file."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    replace_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors save under a temporary name, then rename: a reader never sees half a file."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    replace_atomically(
        path, lambda temporary: safetensors.torch.save_file(tensors, str(temporary), metadata={"format": "pt"})
    )


class TokenPruneTrainer(Trainer):
    """`Trainer` for a pruned model's selector; the rest of the VLM is frozen and has no optimizer state.

    Args:
        model: a pruned VLM from `hf_tokenprune.get_pruned_model` with a learned method attached.
        args: `TokenPruneTrainingArguments` (recipe hyperparameters included); for a method registered by a third
            party, `training_arguments_class()` (or any subclass that mixes in its recipe's arguments).
        train_dataset: conversation records (see `training.data`), e.g. from `load_conversation_records`.
        processing_class: the model's processor; builds the collator when `data_collator` is None.
        image_folder: where relative image paths in the records resolve (for the default collator).
        Everything else is passed to `Trainer`.
    """

    def __init__(
        self,
        model: TokenPruningMixin,
        args: TokenPruneTrainingArguments,
        train_dataset=None,
        processing_class=None,
        data_collator=None,
        image_folder: str | os.PathLike | None = None,
        callbacks=None,
        **kwargs,
    ) -> None:
        if not isinstance(args, TokenPruneTrainingArguments):
            raise TypeError(f"`args` must be TokenPruneTrainingArguments, got {type(args).__name__}")
        training_model = TokenPruneTrainingModel(model, args)
        if data_collator is None:
            if processing_class is None:
                raise ValueError("pass `processing_class` (the model's processor) or a `data_collator`")
            data_collator = TokenPruneDataCollator(processing_class, image_folder=image_folder)
        callbacks = list(callbacks or []) + recipe_callbacks(training_model.recipe, args)
        super().__init__(
            model=training_model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            callbacks=callbacks,
            **kwargs,
        )
        # The wrapper's loss is a per-batch mean; let the Trainer divide it for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0

    @property
    def pruned_model(self) -> TokenPruningMixin:
        return self.model.model

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        for name, value in outputs["metrics"].items():
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + value
        self._metric_count += 1
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Training logs also carry the means since the last log of the schedule values, mask statistics and loss terms."""
        if "loss" in logs and self._metric_count:
            logs.update({name: total / self._metric_count for name, total in self._metric_sums.items()})
            self._metric_sums, self._metric_count = {}, 0
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the trainable tensors, the config and the training recipe (the layout in the module docstring)."""
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        if self.args.should_save:
            self.save_trainable(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def save_trainable(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        tensors = self.model.trainable_state_dict()
        selector = {k[len(SELECTOR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SELECTOR_PREFIX)}
        # Buffers of the selector (none today) would belong with it too.
        selector.update({name: buffer for name, buffer in self.pruned_model.token_selector.named_buffers()})
        others = {k: v for k, v in tensors.items() if not k.startswith(SELECTOR_PREFIX)}
        atomic_save_file(selector, output_dir / SELECTOR_WEIGHTS_NAME)
        if others:
            atomic_save_file(others, output_dir / TRAINING_MODULES_NAME)
        torch.save(self.args, output_dir / "training_args.bin")
        recipe = training_recipe(self.args, self.pruned_model.token_prune_config.method, self.state.global_step)
        atomic_write_json(recipe, output_dir / TRAINING_RECIPE_NAME)
        self.pruned_model.token_prune_config.save_pretrained(output_dir)  # last: marks the checkpoint complete

    # The stock loaders accept only model.safetensors / adapter_model.* files; ours keeps the selector on its own.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_trainable_tensors(self.model if model is None else model, resume_from_checkpoint)

    def _load_best_model(self) -> None:  # the same reason as `_load_from_checkpoint`
        load_trainable_tensors(self.model, self.state.best_model_checkpoint)


def load_trainable_tensors(training_model: TokenPruneTrainingModel, directory: str | os.PathLike) -> None:
    """Load a checkpoint written by `TokenPruneTrainer` into `training_model` (selector + train-only modules)."""
    directory = Path(directory)
    load_selector_weights(training_model.model, directory)
    modules_file = directory / TRAINING_MODULES_NAME
    expected = {k for k in training_model.trainable_state_dict() if not k.startswith(SELECTOR_PREFIX)}
    if expected:
        if not modules_file.is_file():
            raise FileNotFoundError(f"checkpoint {str(directory)!r} has no {TRAINING_MODULES_NAME} to resume from")
        state: dict[str, Any] = safetensors.torch.load_file(str(modules_file))
        if set(state) != expected:
            raise ValueError(
                f"{modules_file} holds {sorted(set(state) ^ expected)[:5]} that do not match this recipe's modules"
            )
        own = dict(training_model.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(
                        f"{modules_file}: `{name}` has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}"
                    )
                own[name].copy_(tensor)
