"""Attach a selector to a stock `transformers` VLM: `get_pruned_model`."""

from __future__ import annotations

import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from transformers import (
    InternVLForConditionalGeneration,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
)

from .modeling.configuration_token_prune import TokenPruneConfig
from .modeling.modeling_pruned_internvl import PrunedInternVLForConditionalGeneration
from .modeling.modeling_pruned_llava import PrunedLlavaForConditionalGeneration
from .modeling.modeling_pruned_llava_next import PrunedLlavaNextForConditionalGeneration
from .modeling.modeling_pruned_qwen2_5_vl import PrunedQwen2_5_VLForConditionalGeneration
from .modeling.pruning import TokenPruningMixin

# Stock class -> drop-in subclass. Checked most-derived first, so a subclass of a stock class also maps.
PRUNED_CLASSES: dict[type[PreTrainedModel], type[TokenPruningMixin]] = {
    Qwen2_5_VLForConditionalGeneration: PrunedQwen2_5_VLForConditionalGeneration,
    LlavaNextForConditionalGeneration: PrunedLlavaNextForConditionalGeneration,
    LlavaForConditionalGeneration: PrunedLlavaForConditionalGeneration,
    InternVLForConditionalGeneration: PrunedInternVLForConditionalGeneration,
}


SELECTOR_WEIGHTS_NAME = "token_selector.safetensors"


def get_pruned_model(
    base_model: PreTrainedModel, config: TokenPruneConfig | str | os.PathLike | None = None
) -> TokenPruningMixin:
    """Return the drop-in pruned subclass of `base_model`, sharing its weights, with `config`'s selector attached.

    `config` is a `TokenPruneConfig` (a learned selector then starts from its initialisation), or a
    directory holding `token_prune_config.json` and, for learned methods, `token_selector.safetensors`
    (e.g. a `TokenPruneTrainer` checkpoint), whose weights are loaded. `base_model` itself is left
    unchanged. `isinstance(result, type(base_model))` holds.
    """
    directory = None
    if isinstance(config, (str, os.PathLike)):
        directory = Path(config)
        config = TokenPruneConfig.from_pretrained(directory)
    if config is None:
        config = TokenPruneConfig()
    if not isinstance(config, TokenPruneConfig):
        raise TypeError(f"`config` must be a TokenPruneConfig or a directory, got {type(config).__name__}")
    if isinstance(base_model, TokenPruningMixin):
        raise ValueError("`base_model` is already a pruned model; pass its stock base model instead")
    pruned_cls = next((pruned for stock, pruned in PRUNED_CLASSES.items() if isinstance(base_model, stock)), None)
    if pruned_cls is None:
        supported = ", ".join(stock.__name__ for stock in PRUNED_CLASSES)
        raise ValueError(f"`base_model` of type {type(base_model).__name__} is not supported; supported: {supported}")
    # Validate before building anything, so a bad config leaves no half-made model behind.
    pruned = pruned_cls.from_base_model(base_model)
    pruned.attach_token_selector(config)
    if directory is not None and pruned.token_selector is not None:
        load_selector_weights(pruned, directory)
    return pruned


def load_selector_weights(model: TokenPruningMixin, directory: str | os.PathLike) -> None:
    """Copy `directory/token_selector.safetensors` into `model.token_selector`, checking names and shapes first.

    Nothing is copied unless every tensor matches, so a bad file leaves the model as it was.
    """
    path = Path(directory) / SELECTOR_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no selector weights: {str(path)!r} does not exist")
    try:
        state = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError) as error:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {error}") from error
    own = model.token_selector.state_dict()
    if set(state) != set(own):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(
            f"{str(path)!r} does not match the {model.token_prune_config.method!r} selector: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ValueError(
                f"{str(path)!r}: `{name}` has shape {tuple(tensor.shape)} but this model's selector needs "
                f"{tuple(own[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in model.token_selector.state_dict(keep_vars=True).items():
            tensor.copy_(state[name])
