"""Hub I/O of the pruned classes: `from_pretrained`, `save_pretrained`, `push_to_hub` (adapter or merged repos).

`PrunedHubMixin` sits beside `TokenPruningMixin` (inference) in every `Pruned*` class. File-level reading and
writing of a repo (its layout, atomic saves, schema checks) is in `repo_io.py`; `upload_folder` is the one upload
path, used by `push_to_hub` here and by `hf_tokenprune.hub.push_folder`.

Imports only the standard library, torch, transformers and what transformers itself requires (`huggingface_hub`),
because it ships to the Hub as remote code.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, ModelCard
from transformers import PreTrainedConfig
from transformers.dynamic_module_utils import custom_object_save
from transformers.models.auto import modeling_auto
from transformers.models.auto.auto_factory import _BaseAutoModelClass
from transformers.utils import logging
from transformers.utils.hub import create_and_tag_model_card, hf_api, resolve_revision

from .repo_io import (
    EVAL_RESULTS_NAME,
    HUB_KWARGS,
    SELECTOR_WEIGHTS_NAME,
    TRAINING_RECIPE_NAME,
    PrunedRepo,
    argument_name,
    atomic_directory,
    check_eval_results,
    check_training_recipe,
    copy_into,
    load_json_argument,
    read_selector_weights,
    save_selector_weights,
    write_json,
)

logger = logging.get_logger(__name__)

MODEL_CARD_NAME = "README.md"
#: keyword arguments of `save_pretrained(..., push_to_hub=True)` that concern the upload, as in transformers.
PUSH_OPTIONS = ("commit_message", "commit_description", "private", "create_pr", "revision", "tags")
#: Folder entries never uploaded: version control, caches, bytecode.
SKIPPED_PARTS = frozenset({".git", ".cache", "__pycache__"})


def resolve_card_writer(writer: Callable[..., Any] | str | None) -> Callable[..., Any] | None:
    """The card writer a save uses: `writer` itself, or for "auto" the library's, if the library is loaded.

    Remote code must not import `hf_tokenprune` (a Hub user may not have it), so "auto" looks the library's
    writer up among the modules this process has already imported instead of importing it.
    """
    if writer != "auto":
        return writer
    library_hub = sys.modules.get("hf_tokenprune.hub")
    return getattr(library_hub, "write_model_card", None)


def upload_folder(
    folder: str | os.PathLike | None,
    repo_id: str,
    *,
    replaced_files: Mapping[str, bytes] | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str,
    commit_description: str | None = None,
    repo_type: str | None = None,
):
    """Upload every file under `folder` (None: no folder) to `repo_id` in one commit; `replaced_files`
    {path_in_repo: bytes} are uploaded instead of (or besides) the folder's own files of that name. A `revision` that
    names a branch other than main is created first. Returns the `CommitInfo`.
    """
    replaced_files = dict(replaced_files or {})
    operations = []
    if folder is not None:
        folder = Path(folder)
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for path in sorted(folder.rglob("*"))
            if path.is_file()
            and not SKIPPED_PARTS.intersection(path.relative_to(folder).parts)
            and path.relative_to(folder).as_posix() not in replaced_files
        ]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in replaced_files.items()]
    api = hf_api()
    kind = {"repo_type": repo_type} if repo_type is not None else {}  # the default (a model repo) is left implicit
    if revision is not None and revision != "main" and not revision.startswith("refs/"):
        api.create_branch(repo_id, branch=revision, token=token, exist_ok=True, **kind)
    logger.info(f"Uploading {len(operations)} files to {repo_id}")
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message,
        commit_description=commit_description,
        token=token,
        revision=revision,
        create_pr=create_pr,
        **kind,
    )


#: `save_pretrained` / `push_to_hub` arguments that describe a token selector, in their order in `refuse_selector_arguments`.
SELECTOR_ARGUMENTS = ("merged", "base_model_name_or_path", "base_model_revision", "eval_results", "training_recipe")


def refuse_selector_arguments(*values: Any) -> None:
    """Raise, naming them, if arguments that only describe a token selector are set on a model without one."""
    given = [name for name, value in zip(SELECTOR_ARGUMENTS, values, strict=True) if value not in (None, False)]
    if given:
        raise ValueError(
            f"{given} describe a token selector, which this model does not have; attach one with "
            "hf_tokenprune.get_pruned_model"
        )


class PrunedHubMixin:
    """Loading, saving and pushing pruned repos; the inference side (`TokenPruningMixin`) attaches the selector."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a pruned repo (adapter or merged form) or a plain checkpoint (then no selector is attached).

        An adapter repo holds only the selector; the base weights come from its `base_model_name_or_path` at
        `base_model_revision`, fetched with the same `cache_dir` / `token` / offline settings. The token-prune
        config and the selector weights are checked against the model config before any weight is loaded.
        """
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        repo = PrunedRepo.find(pretrained_model_name_or_path, hub_kwargs)
        if repo is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        source, source_kwargs = repo.base_source(hub_kwargs)
        # Checked against the config of the weights that will be loaded: an adapter's base may have changed since.
        model_config = kwargs.get("config") if repo.has_base_weights else None
        if not isinstance(model_config, PreTrainedConfig):
            model_config = repo.base_config(cls.config_class, source, source_kwargs)
        try:
            prune_config, selector = cls.build_token_selector(model_config, repo.prune_config)
        except ValueError as error:
            raise ValueError(f"{repo.config_file!r} does not fit the base model {source!s}: {error}") from error
        if selector is not None:
            if repo.selector_file is None:
                raise FileNotFoundError(
                    f"{pretrained_model_name_or_path!s} has no {SELECTOR_WEIGHTS_NAME}, which the learned "
                    f"{prune_config.method!r} selector of {repo.config_file!r} needs"
                )
            copy_into(selector, read_selector_weights(repo.selector_file, selector, prune_config.method))
        model = super().from_pretrained(source, *model_args, **{**kwargs, **source_kwargs})
        model.attach_token_selector(prune_config, selector)
        model.token_prune_extra_files = dict(repo.extra_files)
        return model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        merged: bool = False,
        base_model_name_or_path: str | None = None,
        base_model_revision: str | None = None,
        eval_results: dict | str | os.PathLike | None = None,
        training_recipe: dict | str | os.PathLike | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_writer: Callable[..., Any] | str | None = "auto",
        **kwargs,
    ):
        """Write a Hub-ready repo: adapter form by default (selector only), `merged=True` adds the base weights.

        `base_model_name_or_path` / `base_model_revision` default to the attached config's, then to the path this
        model was loaded from; an adapter needs one (a Hub base's commit is pinned from the local cache).
        `eval_results` (results of `hf-tokenprune eval`) and `training_recipe` (a flat mapping) are dicts or JSON
        files copied into the repo for its model card; `repo_id` is the Hub id the card's usage snippet loads. The
        save is atomic: an interrupted one never leaves a directory that looks complete.

        `push_to_hub=True` then uploads the folder in one commit to `repo_id` (default: the folder's name), taking
        `private`, `token`, `revision`, `commit_message`, `commit_description`, `create_pr` and `tags` as the stock
        method does. Other keyword arguments go to the stock `save_pretrained` (merged form).

        `model_card_writer(folder, repo_id, model_path=..., revision=...)` writes `folder/README.md` once every other
        file is staged; `"auto"` uses `hf_tokenprune.hub.write_model_card` when the library is loaded in this
        process (remote code alone has no card template), None writes no card.

        A model with no selector attached (built from a config, or loaded from a plain checkpoint) saves exactly as
        the stock class does; the selector-only arguments above then raise.
        """
        prune_config = getattr(self, "token_prune_config", None)
        if prune_config is None:
            # Nothing to prune with: a plain checkpoint, written exactly as the stock class writes it.
            refuse_selector_arguments(
                merged, base_model_name_or_path, base_model_revision, eval_results, training_recipe
            )
            if repo_id is not None:
                kwargs["repo_id"] = repo_id
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        hub_options = {name: kwargs.pop(name) for name in PUSH_OPTIONS if name in kwargs}
        if hub_options and not push_to_hub:
            raise TypeError(f"{sorted(hub_options)} only apply with push_to_hub=True")
        if not isinstance(merged, bool):
            raise TypeError(f"`merged` must be a bool, got {type(merged).__name__}")
        extras = dict(getattr(self, "token_prune_extra_files", None) or {})
        if eval_results is not None:
            results = load_json_argument(eval_results, "eval_results")
            extras[EVAL_RESULTS_NAME] = check_eval_results(results, argument_name("eval_results", eval_results))
        if training_recipe is not None:
            recipe = load_json_argument(training_recipe, "training_recipe")
            extras[TRAINING_RECIPE_NAME] = check_training_recipe(
                recipe, argument_name("training_recipe", training_recipe)
            )
        base = base_model_name_or_path or prune_config.base_model_name_or_path or self.config._name_or_path or None
        if base is None and not merged:
            raise ValueError(
                "`base_model_name_or_path` is needed for the adapter form: this model was not loaded from a path or "
                "repo id, so pass the base model's Hub id (or pass merged=True to store the base weights)"
            )
        if push_to_hub and not merged and os.path.isdir(base):
            raise ValueError(
                f"`base_model_name_or_path` {base!r} is a local folder, which nobody loading this adapter from the Hub "
                "has: pass the base model's Hub id, or push the merged form"
            )
        revision = base_model_revision or (None if base_model_name_or_path else prune_config.base_model_revision)
        if revision is None and base is not None and not os.path.isdir(base) and not base.startswith(("./", "../")):
            # Pin the commit of a Hub base when the local cache knows it (it does when the base was loaded from it).
            revision = getattr(resolve_revision(base, None, local_files_only=True), "resolved", None)
        prune_config = dataclasses.replace(prune_config, base_model_name_or_path=base, base_model_revision=revision)
        if merged and getattr(self, "peft_config", None):
            raise ValueError(
                "`merged=True` on a model with PEFT adapters injected would store PEFT's layer names, which the stock "
                "classes cannot load: call `merge_and_unload()` first, or save the adapter form (merged=False) and "
                "the PEFT adapter with its own `save_pretrained`"
            )
        if push_to_hub:  # everything above is checked before the first network call
            repo_id = (
                hf_api()
                .create_repo(
                    repo_id or Path(save_directory).name,
                    private=hub_options.get("private"),
                    token=kwargs.get("token"),
                    exist_ok=True,
                )
                .repo_id
            )

        with atomic_directory(save_directory) as staging:
            if merged:
                selector, self.token_selector = self.token_selector, None  # base weights only in model.safetensors
                try:
                    super().save_pretrained(staging, **kwargs)
                finally:
                    self.token_selector = selector
            config = copy.deepcopy(self.config)
            config.architectures = [type(self).__name__]
            config.auto_map = self.auto_map()
            config.save_pretrained(staging)
            if self.token_selector is not None:
                save_selector_weights(self.token_selector, staging / SELECTOR_WEIGHTS_NAME)
            custom_object_save(self, staging)  # this class's file and every sibling it imports
            for name, data in extras.items():
                write_json(data, staging / name)
            prune_config.save_pretrained(staging)  # the file that marks a save complete; it lands last
            card_writer = resolve_card_writer(model_card_writer)
            if card_writer is not None:
                card_writer(
                    staging,
                    repo_id,
                    model_path=Path(save_directory).resolve(),
                    revision=hub_options.get("revision"),
                )
        if push_to_hub:
            folder = Path(save_directory)
            tags = hub_options.pop("tags", None)
            hub_options.pop("private", None)  # applied when the repo was created above
            if tags or not (folder / MODEL_CARD_NAME).exists():
                # No card writer (remote code without hf_tokenprune): tag the repo's card as the stock push_to_hub does.
                card_path = folder / MODEL_CARD_NAME
                card = (
                    ModelCard.load(card_path)
                    if card_path.exists()
                    else create_and_tag_model_card(repo_id, tags, kwargs.get("token"))
                )
                card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *(tags or [])]))
                card.save(card_path)
            if hub_options.get("commit_message") is None:
                hub_options["commit_message"] = f"Upload {type(self).__name__} ({prune_config.method})"
            return upload_folder(folder, repo_id, token=kwargs.get("token"), **hub_options)

    @classmethod
    def auto_map(cls) -> dict[str, str]:
        """`config.json`'s auto_map: every transformers Auto class whose stock choice for this config is our base class."""
        stock = cls._stock_class()
        reference = f"{cls.__module__.split('.')[-1]}.{cls.__name__}"
        auto_map = {}
        for name in dir(modeling_auto):
            auto_class = getattr(modeling_auto, name)
            if not (isinstance(auto_class, type) and issubclass(auto_class, _BaseAutoModelClass)):
                continue
            if getattr(auto_class, "_model_mapping", None) is None:
                continue
            try:
                choice = auto_class._model_mapping[stock.config_class]
            except (KeyError, ValueError):
                continue
            if choice is stock:
                auto_map[name] = reference
        return dict(sorted(auto_map.items()))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        merged: bool = False,
        eval_results: dict | str | os.PathLike | None = None,
        training_recipe: dict | str | os.PathLike | None = None,
        base_model_name_or_path: str | None = None,
        base_model_revision: str | None = None,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        model_card_writer: Callable[..., Any] | str | None = "auto",
    ):
        """`save_pretrained` into a temporary folder (card included), then upload it to `repo_id` in one commit.

        A model with no selector attached pushes as the stock class does.
        """
        if not isinstance(repo_id, str) or not repo_id:
            raise ValueError(f"`repo_id` must be a non-empty string such as 'user/name', got {repo_id!r}")
        upload = dict(
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            tags=tags,
        )
        if getattr(self, "token_prune_config", None) is None:
            refuse_selector_arguments(
                merged, base_model_name_or_path, base_model_revision, eval_results, training_recipe
            )
            return super().push_to_hub(repo_id, max_shard_size=max_shard_size, **upload)
        with tempfile.TemporaryDirectory() as work_dir:
            return self.save_pretrained(
                Path(work_dir) / "repo",
                merged=merged,
                base_model_name_or_path=base_model_name_or_path,
                base_model_revision=base_model_revision,
                eval_results=eval_results,
                training_recipe=training_recipe,
                repo_id=repo_id,
                push_to_hub=True,
                model_card_writer=model_card_writer,
                **upload,
                **({"max_shard_size": max_shard_size} if merged and max_shard_size is not None else {}),
            )
