"""Reading and writing pruned-model repos (adapter or merged form), locally or through the Hub cache.

Layout of a repo written by `TokenPruningMixin.save_pretrained`:

    config.json                  the base model's config + `architectures` / `auto_map` naming our classes
    token_prune_config.json      `TokenPruneConfig`, incl. base_model_name_or_path / revision (written last)
    token_selector.safetensors   learned selector weights (absent for training-free methods)
    modeling_pruned_*.py, ...    the remote code: the model's file and every sibling it imports
    model*.safetensors           merged form only: the base weights (+ generation_config.json)
    training_recipe.json         optional: how the selector was trained (flat JSON object)
    eval_results.json            optional: {"unpruned_accuracy": x, "results": [{method, budget, ...}, ...]}
    README.md                    model card, when a card writer is registered (hf_tokenprune registers one)

Imports only the standard library, torch, transformers and what transformers itself requires (`safetensors`,
`huggingface_hub`), because it ships to the Hub as remote code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from .configuration_token_prune import CONFIG_NAME, TokenPruneConfig, check_budget

SELECTOR_WEIGHTS_NAME = "token_selector.safetensors"
TRAINING_RECIPE_NAME = "training_recipe.json"
EVAL_RESULTS_NAME = "eval_results.json"
EXTRA_FILES = (TRAINING_RECIPE_NAME, EVAL_RESULTS_NAME)
EVAL_RESULT_FIELDS = ("method", "budget", "accuracy", "retention", "kept_tokens")
# A retention above this is almost surely a percentage written where a fraction belongs.
MAX_RETENTION = 2.0

#: `from_pretrained` keyword arguments that say where and how to fetch files.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


def _locate(path_or_repo_id: str | os.PathLike, filename: str, hub_kwargs: Mapping[str, Any]) -> str | None:
    """Local path of `filename` in a directory or a Hub repo (downloaded or from the cache), None if it has none."""
    return cached_file(
        path_or_repo_id,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r} is not UTF-8 text: {error}") from error


class PrunedRepo:
    """What `from_pretrained` needs to know about a pruned-model repo before loading any weight."""

    def __init__(self, source: str | os.PathLike, hub_kwargs: Mapping[str, Any]) -> None:
        config_file = _locate(source, CONFIG_NAME, hub_kwargs)
        if config_file is None:
            raise FileNotFoundError(f"{source!s} has no {CONFIG_NAME}")
        self.source = source
        self.config_file = config_file
        self.prune_config = TokenPruneConfig.from_json_file(config_file)
        self.has_base_weights = any(
            _locate(source, name, hub_kwargs) is not None for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
        )
        self.selector_file = _locate(source, SELECTOR_WEIGHTS_NAME, hub_kwargs)
        self.extra_files = {}
        for name in EXTRA_FILES:
            path = _locate(source, name, hub_kwargs)
            if path is not None:
                self.extra_files[name] = read_json(path)

    @classmethod
    def find(cls, source: str | os.PathLike, hub_kwargs: Mapping[str, Any]) -> PrunedRepo | None:
        """The repo at `source`, or None when it is a plain (unpruned) checkpoint without a token_prune_config.json."""
        if _locate(source, CONFIG_NAME, hub_kwargs) is None:
            return None
        return cls(source, hub_kwargs)

    def base_source(self, hub_kwargs: Mapping[str, Any]) -> tuple[str | os.PathLike, dict[str, Any]]:
        """Where the base weights come from, with the fetch arguments to use there."""
        if self.has_base_weights:
            return self.source, dict(hub_kwargs)
        base = self.prune_config.base_model_name_or_path
        if not base:
            raise ValueError(
                f"{self.config_file!r} is an adapter (no base weights in {self.source!s}) but its "
                "`base_model_name_or_path` is empty, so the base model cannot be found"
            )
        if base.startswith(("./", "../")) and os.path.isdir(self.source):
            # A base stored next to a local adapter (e.g. a bundled model): relative to the adapter's folder.
            base = os.path.normpath(os.path.join(self.source, base))
        # The adapter's own revision and subfolder say nothing about the base repo.
        base_kwargs = {k: v for k, v in hub_kwargs.items() if k not in ("revision", "subfolder")}
        if self.prune_config.base_model_revision:
            base_kwargs["revision"] = self.prune_config.base_model_revision
        return base, base_kwargs

    def base_config(self, config_class, source: str | os.PathLike, source_kwargs: Mapping[str, Any]):
        """The config of the weights at `source`, refused (naming both files) if it is another model type."""
        path = _locate(source, "config.json", source_kwargs)
        if path is None:
            raise FileNotFoundError(
                f"the base model {source!s} named by {self.config_file!r} has no config.json (or is not reachable)"
            )
        model_type = read_json(path).get("model_type")
        expected = self.prune_config.base_model_type or config_class.model_type
        if model_type != expected:
            raise ValueError(
                f"{self.config_file!r} holds a selector for a {expected!r} model but its base {source!s} is a "
                f"{model_type!r} model ({path!r}): the selector was trained for another base model"
            )
        return config_class.from_pretrained(source, **source_kwargs)


def read_selector_weights(path: str | os.PathLike, selector: torch.nn.Module, method: str) -> dict[str, torch.Tensor]:
    """Read a selector's safetensors file and check it against `selector`'s names and shapes; copies nothing."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no selector weights: {path!r} does not exist")
    try:
        state = load_file(path)
    # safetensors' own error type derives only from Exception; every parse failure means "not a readable file".
    except Exception as error:
        raise ValueError(f"{path!r} is not a readable safetensors file: {error}") from error
    own = selector.state_dict()
    if set(state) != set(own):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ValueError(
            f"{path!r} does not match the {method!r} selector: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ValueError(
                f"{path!r}: `{name}` has shape {tuple(tensor.shape)} but this model's selector needs "
                f"{tuple(own[name].shape)}: the selector was trained for another base model"
            )
    return state


def copy_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            tensor.copy_(state[name])


def save_selector_weights(selector: torch.nn.Module, path: Path) -> None:
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in selector.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_eval_results(data: Any, name: str) -> dict[str, Any]:
    """Validate results of `hf-tokenprune eval`; errors name `name` (the file or argument) and the field.

    Schema: {"unpruned_accuracy": number, "results": [{"method": str, "budget": float in (0, 1] or int >= 1,
    "accuracy": number, "retention": fraction of the unpruned accuracy, "kept_tokens": number}, ...]}.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{name}: must hold a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"unpruned_accuracy", "results"})
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {unknown}; allowed: ['results', 'unpruned_accuracy']")
    if not _finite_number(data.get("unpruned_accuracy")) or data["unpruned_accuracy"] < 0:
        raise ValueError(f"{name}: `unpruned_accuracy` must be a number >= 0, got {data.get('unpruned_accuracy')!r}")
    results = data.get("results")
    if not isinstance(results, list) or not results:
        raise ValueError(f"{name}: `results` must be a non-empty list of rows, got {results!r}")
    for index, row in enumerate(results):
        where = f"{name}: results[{index}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where} must be an object with fields {list(EVAL_RESULT_FIELDS)}, got {row!r}")
        missing, unknown = sorted(set(EVAL_RESULT_FIELDS) - set(row)), sorted(set(row) - set(EVAL_RESULT_FIELDS))
        if missing or unknown:
            raise ValueError(f"{where}: missing field(s) {missing}, unknown field(s) {unknown}")
        if not isinstance(row["method"], str) or not row["method"]:
            raise ValueError(f"{where}.method must be a non-empty string, got {row['method']!r}")
        try:
            check_budget(row["budget"], f"results[{index}].budget")
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: {error}") from error
        for field_name in ("accuracy", "kept_tokens", "retention"):
            if not _finite_number(row[field_name]) or row[field_name] < 0:
                raise ValueError(f"{where}.{field_name} must be a number >= 0, got {row[field_name]!r}")
        if row["retention"] > MAX_RETENTION:
            raise ValueError(
                f"{where}.retention must be a fraction of the unpruned accuracy (0.95 for 95%), got {row['retention']}"
            )
    return data


def check_training_recipe(data: Any, name: str) -> dict[str, Any]:
    """A training recipe is a flat JSON object {setting: string, number, boolean or null}."""
    if not isinstance(data, dict):
        raise ValueError(f"{name} must hold a flat JSON object of setting: value, got {type(data).__name__}")
    for key, value in data.items():
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise ValueError(f"{name}: `{key}` must be a string, number, boolean or null, got {value!r}")
    return data


def argument_name(argument: str, value: Any) -> str:
    """How errors name a dict-or-path argument: the file when it is one."""
    return str(value) if isinstance(value, (str, os.PathLike)) else f"`{argument}`"


def load_json_argument(value: Any, argument: str) -> Any:
    """A dict passes through; a path is read as JSON. Errors name `argument`."""
    if isinstance(value, (str, os.PathLike)):
        if not os.path.isfile(value):
            raise FileNotFoundError(f"`{argument}`: {str(value)!r} does not exist")
        return read_json(value)
    if isinstance(value, dict):
        return json.loads(json.dumps(value))  # a JSON-able deep copy
    raise TypeError(f"`{argument}` must be a dict or a path to a JSON file, got {type(value).__name__}")


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(temporary)` on a file beside `path`, then rename it onto `path`: a reader never sees half a file,
    and a failed write leaves `path` as it was and no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_json(data: Any, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _is_weights_file(name: str) -> bool:
    return name.startswith("model") and (name.endswith(".safetensors") or name == SAFE_WEIGHTS_INDEX_NAME)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory; on success its files become `target`, on failure it is removed.

    A new `target` appears in one rename. An existing one (it may hold files of other writers, e.g. a processor)
    first loses `token_prune_config.json`, the file that marks a save complete, then receives the staged files,
    the marker last; stale weights of an earlier save that this one does not write are removed. So an interrupted
    save never leaves a directory that looks complete. Nothing here is in `os` or `shutil` as one call.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"`save_directory` {str(target)!r} is a file, not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        if not target.exists():
            os.rename(staging, target)
            return
        (target / CONFIG_NAME).unlink(missing_ok=True)
        written = {path.name for path in staging.iterdir()}
        for stale in target.iterdir():
            ours = _is_weights_file(stale.name) or stale.name in (SELECTOR_WEIGHTS_NAME, *EXTRA_FILES)
            if ours and stale.name not in written and stale.is_file():
                stale.unlink()
        for path in sorted(staging.iterdir(), key=lambda path: path.name == CONFIG_NAME):
            destination = target / path.name
            if destination.is_dir() and not path.is_dir():
                raise IsADirectoryError(f"cannot write {path.name}: {str(destination)!r} is a directory")
            os.replace(path, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
