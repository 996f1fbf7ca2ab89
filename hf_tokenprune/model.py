"""Attach a selector to a stock `transformers` VLM: `get_pruned_model`."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import PreTrainedModel

from .modeling import builtin_architectures  # noqa: F401  (importing it registers every built-in architecture)
from .modeling.architectures import get_pruned_class, pruned_classes
from .modeling.configuration_token_prune import CONFIG_NAME, TokenPruneConfig
from .modeling.pruning import TokenPruningMixin
from .modeling.repo_io import EXTRA_FILES, SELECTOR_WEIGHTS_NAME, copy_into, read_json, read_selector_weights

# Stock class -> drop-in subclass of the built-in architectures (a snapshot; `pruned_classes()` is the live registry).
PRUNED_CLASSES: dict[type[PreTrainedModel], type[TokenPruningMixin]] = pruned_classes()


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
    pruned_cls = get_pruned_class(type(base_model))
    if pruned_cls is None:
        supported = ", ".join(stock.__name__ for stock in pruned_classes())
        raise ValueError(f"`base_model` of type {type(base_model).__name__} is not supported; supported: {supported}")
    # Validate (and read the weights) before building anything, so a bad config or file leaves no half-made model.
    selector, extras = None, {}
    if directory is not None:
        try:
            config, selector = pruned_cls.build_token_selector(base_model.config, config)
        except ValueError as error:
            raise ValueError(f"{str(directory / CONFIG_NAME)!r}: {error}") from error
        if selector is not None:
            copy_into(selector, read_selector_weights(directory / SELECTOR_WEIGHTS_NAME, selector, config.method))
        # The training recipe / eval results of a checkpoint travel on into `save_pretrained` and the model card.
        extras = {name: read_json(directory / name) for name in EXTRA_FILES if (directory / name).is_file()}
    pruned = pruned_cls.from_base_model(base_model)
    pruned.attach_token_selector(config, selector)
    pruned.token_prune_extra_files = extras
    return pruned


def load_selector_weights(model: TokenPruningMixin, directory: str | os.PathLike) -> None:
    """Copy `directory/token_selector.safetensors` into `model.token_selector`, checking names and shapes first.

    Nothing is copied unless every tensor matches, so a bad file leaves the model as it was.
    """
    path = Path(directory) / SELECTOR_WEIGHTS_NAME
    state = read_selector_weights(path, model.token_selector, model.token_prune_config.method)
    copy_into(model.token_selector, state)
