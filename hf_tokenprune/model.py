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


def pruned_class_for(architectures: list[str]) -> type[TokenPruningMixin]:
    """The registered pruned class that a repo's `config.json` `architectures` names (the first one found)."""
    by_name = {pruned.__name__: pruned for pruned in pruned_classes().values()}
    found = [by_name[name] for name in architectures if name in by_name]
    if not found:
        raise ValueError(f"`model`: config.json names {architectures}, none of them a pruned class {sorted(by_name)}")
    return found[0]


def load_pruned_repo(path_or_repo_id: str | os.PathLike, **kwargs):
    """(pruned model, processor) of a repo written by `save_pretrained` (a folder or Hub id, adapter or merged form).

    The model loads with the pruned class its `config.json` names (no remote code needed); `kwargs` (`dtype`,
    `device_map`, `revision`, `cache_dir`, ...) go to its `from_pretrained`. The processor is the repo's, else (an
    adapter repo) its base model's. Raises when the repo holds no `token_prune_config.json`.
    """
    from transformers.utils import cached_file

    from .modeling.repo_io import HUB_KWARGS
    from .processing import load_processor

    hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
    architectures = read_json(cached_file(path_or_repo_id, "config.json", **hub_kwargs)).get("architectures") or []
    model = pruned_class_for(architectures).from_pretrained(path_or_repo_id, **kwargs)
    if model.token_prune_config is None:
        raise ValueError(f"`model` {str(path_or_repo_id)!r} is not a pruned repo (no {CONFIG_NAME})")
    try:
        processor = load_processor(path_or_repo_id, **hub_kwargs)
    except (OSError, ValueError):  # an adapter repo: the processor is saved with its base model
        processor = load_processor(model.name_or_path)
    return model, processor
