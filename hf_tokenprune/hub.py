"""Model cards and uploads for saved pruned repos: `render_model_card`, `write_model_card`, `push_folder`; the
Space demo's template: `render_space`, `push_space`.

A saved repo is the folder `save_pretrained` writes (config.json with `auto_map`, token_prune_config.json, the
selector weights, the remote-code files and, in the merged form, the base weights). The card is rendered from
`hub_cards/model_card.md` with nothing but that folder's files and the repo id, so the same folder always gives the
same card. `save_pretrained` of a pruned model uses `write_model_card` when this module is loaded (its default
`model_card_writer="auto"`), so every save made through the library ends with a README.md; pass it explicitly to
choose.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData, SpaceCard, SpaceCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.dynamic_module_utils import get_relative_imports
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, logging

from .modeling.configuration_token_prune import CONFIG_NAME, TokenPruneConfig
from .modeling.hub_io import upload_folder
from .modeling.repo_io import (
    EVAL_RESULTS_NAME,
    SELECTOR_WEIGHTS_NAME,
    TRAINING_RECIPE_NAME,
    argument_name,
    check_eval_results,
    check_training_recipe,
    load_json_argument,
    read_json,
    replace_atomically,
)
from .modeling.token_selectors import available_selectors, get_selector_class

logger = logging.get_logger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "hub_cards" / "model_card.md"
SPACE_TEMPLATE_DIR = Path(__file__).resolve().parent / "hub_cards" / "space"
TESTBED = "testbed"  # the Space's --model for the testbed model bundled with the package (works offline)
GRADIO_SDK_VERSION = "6.31.0"  # the Gradio the Space app is tested with; a Space installs it from `sdk_version`
APP_MODEL_LINE = "MODEL = None"  # the line of the Space template's app.py that `render_space` sets
MODEL_CARD_NAME = "README.md"
MODEL_CONFIG_NAME = "config.json"
# Any of these in the folder means the base weights are stored too: the merged form.
BASE_WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
DEFAULT_SNIPPET_BUDGET = 0.2
#: Namespace of the repo id in a card rendered before the repo is pushed (the card never names a local path).
PLACEHOLDER_NAMESPACE = "your-namespace"


# ---------------------------------------------------------------------------------------------- reading a folder
def _check_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"`folder` {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"`folder` {str(folder)!r} is not a directory")
    return folder


def _load_model_config(folder: Path) -> dict[str, Any]:
    path = folder / MODEL_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a saved model folder (save it with save_pretrained)")
    config = read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ValueError(f"{path} has no `model_type`")
    return config


def _load_prune_config(folder: Path, model_type: str) -> TokenPruneConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a saved pruned model (save it with save_pretrained)")
    try:
        prune_config = TokenPruneConfig.from_pretrained(folder)
        get_selector_class(prune_config.method, argument="method")
    except (ValueError, TypeError) as error:
        message = str(error)
        raise ValueError(message if str(path) in message else f"{path}: {message}") from error
    if prune_config.base_model_type is not None and prune_config.base_model_type != model_type:
        raise ValueError(
            f"{path}: `base_model_type` is {prune_config.base_model_type!r} but {folder / MODEL_CONFIG_NAME} has "
            f"`model_type` {model_type!r}"
        )
    return prune_config


def load_eval_results(source: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """Read (a path) or take (a dict) evaluation results and validate them; errors name the file and field."""
    return check_eval_results(load_json_argument(source, "eval_results"), argument_name("eval_results", source))


def load_training_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read `training_recipe.json`: a flat JSON object of {setting: scalar}."""
    return check_training_recipe(read_json(path), str(path))


def is_merged(folder: str | os.PathLike) -> bool:
    """Whether a saved folder holds the base weights too (merged form) rather than the selector only (adapter)."""
    return any((Path(folder) / name).is_file() for name in BASE_WEIGHTS_NAMES)


def is_hub_id(name: str | None) -> bool:
    """Whether `name` is a valid Hub repo id (not a local path, not empty)."""
    if not name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- the card
def _cell(value: Any) -> str:
    """A markdown table cell: strings as written (pipes escaped), other scalars as JSON."""
    text = value if isinstance(value, str) else json.dumps(value)
    return " ".join(text.split()).replace("|", "\\|")


def _number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else format(value, ".6g")


def _budget_description(budget: float | int | str | None) -> str:
    if budget is None:
        return "none: without `prune_budget` the model runs unpruned."
    if isinstance(budget, str):
        return f"`{budget}`: without `prune_budget`, the selector chooses each image's budget from its scores."
    if isinstance(budget, float):
        return f"`{budget}`: without `prune_budget`, {100 * budget:g}% of each image's visual tokens are kept."
    return f"`{budget}`: without `prune_budget`, {budget} visual tokens of each image are kept."


def _citation(method: str) -> tuple[list[str], str]:
    """(paper titles, sentence when there are none)."""
    selector_cls = get_selector_class(method, argument="method") if method in available_selectors() else None
    titles = list(selector_cls.papers) if selector_cls is not None else []
    if selector_cls is not None and not titles and not selector_cls.trainable:
        return [], f"The `{method}` method is a baseline without a paper of its own."
    return titles, "" if titles else f"No paper is recorded for the `{method}` method."


def render_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    *,
    revision: str | None = None,
    eval_results: str | os.PathLike | dict[str, Any] | None = None,
    model_path: str | os.PathLike | None = None,
    usage: str | None = None,
) -> ModelCard:
    """The model card of a saved pruned folder, from its files and `repo_id` alone.

    The card never names a path of this machine: the usage snippet loads `repo_id` (at `revision` when given) or, when
    no repo id is known yet, a placeholder `your-namespace/<name>` with a comment to replace it (pushing re-renders
    the card with the repo id). `<name>` is the name of `model_path` (default: `folder`; a save that writes the card in
    a staging folder passes where the folder will end up). The base model is named (metadata, text, processor) only
    when it is a Hub id. `eval_results` (a path or a dict) replaces the folder's `eval_results.json`. `usage`: a
    Python snippet to show under Usage instead of the generic one (e.g. for a folder that loads through a package's
    helper rather than a Hub id); it must name no path of this machine either. Raises before rendering
    when config.json or token_prune_config.json is missing or bad, or eval_results.json / training_recipe.json
    breaks its schema; the error names the file and field.
    """
    if repo_id is not None and not is_hub_id(repo_id):
        raise ValueError(f"`repo_id` {repo_id!r} is not a valid Hub repo id ('namespace/name')")
    folder = _check_folder(folder)
    model_config = _load_model_config(folder)
    model_type = model_config["model_type"]
    prune_config = _load_prune_config(folder, model_type)
    if eval_results is None and (folder / EVAL_RESULTS_NAME).is_file():
        eval_results = folder / EVAL_RESULTS_NAME
    results = load_eval_results(eval_results) if eval_results is not None else None
    recipe_path = folder / TRAINING_RECIPE_NAME
    recipe = load_training_recipe(recipe_path) if recipe_path.is_file() else None

    method = prune_config.method
    trainable = get_selector_class(method, argument="method").trainable
    merged = is_merged(folder)
    base = prune_config.base_model_name_or_path
    base_on_hub = is_hub_id(base)
    name = Path(model_path if model_path is not None else folder).resolve().name
    model_ref = repo_id if repo_id is not None else f"{PLACEHOLDER_NAMESPACE}/{name}"
    processor_unknown = False
    if base_on_hub:
        processor_ref, processor_revision = base, prune_config.base_model_revision
    elif any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        processor_ref, processor_revision = model_ref, revision
    else:  # a merged save of a model built from a config: the snippet asks the reader for the base model's id
        processor_ref, processor_revision, processor_unknown = "BASE-MODEL-ID", None, True
    budget = prune_config.budget if prune_config.budget is not None else DEFAULT_SNIPPET_BUDGET

    metadata: dict[str, Any] = dict(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=list(dict.fromkeys(["hf-tokenprune", "token-pruning", method, model_type])),
    )
    if base_on_hub:
        metadata["base_model"] = base
        if not merged:
            metadata["base_model_relation"] = "adapter"
        base_display = f"[`{base}`](https://huggingface.co/{base})"
    else:
        base_display = "a base model that is not on the Hub" if base else "an unrecorded base model"
    if merged:
        form = "merged. This repository holds the base model's weights as well, so loading needs no other repository."
    else:
        form = "adapter. This repository holds only the selector and the model code; the base model's weights are " + (
            f"downloaded from `{base}` when the model loads."
            if base_on_hub
            else f"loaded from the base model named in `{CONFIG_NAME}` when the model loads."
        )
    titles, no_paper = _citation(method)
    result_rows = []
    for row in results["results"] if results else []:
        result_rows.append(
            dict(
                method=_cell(row["method"]),
                budget=_number(row["budget"]),
                accuracy=_number(row["accuracy"]),
                retention=f"{100 * row['retention']:.1f}",
                kept_tokens=_number(row["kept_tokens"]),
            )
        )
    return ModelCard.from_template(
        ModelCardData(**metadata),
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=repo_id or name,
        model_placeholder=repo_id is None,
        method=method,
        method_kind=(
            f"learned: its scorer weights are in `{SELECTOR_WEIGHTS_NAME}`"
            if trainable
            else "training-free: it has no weights"
        ),
        trainable=trainable,
        base_model_display=base_display,
        base_model_revision=prune_config.base_model_revision,
        form_description=form,
        budget_description=_budget_description(prune_config.budget),
        transformers_version=model_config.get("transformers_version"),
        model_ref=json.dumps(model_ref),
        model_revision_arg=f", revision={json.dumps(revision)}" if revision else "",
        processor_ref=json.dumps(processor_ref),
        processor_revision_arg=f", revision={json.dumps(processor_revision)}" if processor_revision else "",
        processor_unknown=processor_unknown,
        budget=repr(budget),
        recipe_rows=[(_cell(name), _cell(value)) for name, value in (recipe or {}).items()],
        unpruned_accuracy=_number(results["unpruned_accuracy"]) if results else None,
        result_rows=result_rows,
        paper_titles=titles,
        no_paper_sentence=no_paper,
        usage=usage.strip("\n") if usage else None,
    )


def card_bytes(card: ModelCard) -> bytes:
    """What README.md holds for `card`: its text, ending in one newline."""
    return (str(card).rstrip("\n") + "\n").encode("utf-8")


def write_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    *,
    model_path: str | os.PathLike | None = None,
    revision: str | None = None,
    usage: str | None = None,
) -> Path:
    """Render the card of `folder` and write it to `folder/README.md` atomically (temp file + rename).

    `model_path`, `revision`, `usage`: see `render_model_card`.
    """
    branch = revision if revision and revision != "main" and not revision.startswith("refs/") else None
    data = card_bytes(render_model_card(folder, repo_id, model_path=model_path, revision=branch, usage=usage))
    return replace_atomically(Path(folder) / MODEL_CARD_NAME, lambda temporary: temporary.write_bytes(data))


# ---------------------------------------------------------------------------------------------- pushing
def _remote_code_files(folder: Path, auto_map: dict[str, Any]) -> list[Path]:
    """The module files `auto_map` names, then everything they import relatively; raises naming a missing one."""
    references = []
    for value in auto_map.values():
        references += value if isinstance(value, (list, tuple)) else [value]
    pending = []
    for reference in references:
        if not isinstance(reference, str) or "--" in reference:
            continue  # None (no class for that slot) or code hosted in another repo
        module = reference.rsplit(".", 1)[0]
        pending.append((folder / f"{module}.py", f"`auto_map` of {folder / MODEL_CONFIG_NAME}"))
    seen: list[Path] = []
    while pending:
        path, named_by = pending.pop()
        if path in seen:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: remote-code file named by {named_by}")
        seen.append(path)
        pending += [(folder / f"{module.replace('.', '/')}.py", str(path)) for module in get_relative_imports(path)]
    return seen


def check_pushable(folder: str | os.PathLike) -> TokenPruneConfig:
    """Raise unless `folder` is a complete saved pruned repo that others can load from the Hub."""
    folder = _check_folder(folder)
    model_config = _load_model_config(folder)
    prune_config = _load_prune_config(folder, model_config["model_type"])
    config_path = folder / MODEL_CONFIG_NAME
    auto_map = model_config.get("auto_map")
    if not isinstance(auto_map, dict) or "AutoModelForImageTextToText" not in auto_map:
        raise ValueError(
            f"{config_path} has no `auto_map` entry for AutoModelForImageTextToText: save the model with the "
            "pruned class's save_pretrained so the remote code is wired in"
        )
    _remote_code_files(folder, auto_map)
    if get_selector_class(prune_config.method, argument="method").trainable:
        weights = folder / SELECTOR_WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: the learned {prune_config.method!r} selector needs it")
    base = prune_config.base_model_name_or_path
    if not is_hub_id(base):
        raise ValueError(
            f"{folder / CONFIG_NAME}: `base_model_name_or_path` is {base!r}, not a Hub model id; others could not "
            "load the base model or its processor. Save again with base_model_name_or_path='namespace/name'"
        )
    return prune_config


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    eval_results: str | os.PathLike | dict[str, Any] | None = None,
):
    """Upload a saved pruned folder to `repo_id` in one commit, with a card rendered for that repo id.

    Checks everything before the first network call: the folder is a saved pruned repo (config.json with
    `auto_map`, token_prune_config.json, the remote-code files, `token_selector.safetensors` for a learned method,
    a Hub id as base model) and `eval_results` (a path or a dict) holds valid results; it is uploaded as
    eval_results.json. The folder itself is not modified: README.md is rendered in memory. Returns the CommitInfo.
    """
    if not is_hub_id(repo_id) or "/" not in repo_id:
        raise ValueError(f"`repo_id` must be a Hub repo id 'namespace/name', got {repo_id!r}")
    folder = _check_folder(folder)
    prune_config = check_pushable(folder)
    results_bytes = None
    if eval_results is not None:
        results = load_eval_results(eval_results)
        if isinstance(eval_results, dict):
            results_bytes = (json.dumps(results, indent=2) + "\n").encode("utf-8")
        else:
            results_bytes = Path(eval_results).read_bytes()
    branch = revision if revision and not revision.startswith("refs/") else None
    card = render_model_card(folder, repo_id, revision=branch if branch != "main" else None, eval_results=eval_results)
    replaced = {MODEL_CARD_NAME: card_bytes(card)}
    if results_bytes is not None:
        replaced[EVAL_RESULTS_NAME] = results_bytes
    form = "merged" if is_merged(folder) else "adapter"
    if commit_message is None:
        commit_message = (
            f"Upload {prune_config.method} token pruning for {prune_config.base_model_name_or_path} ({form})"
        )

    HfApi().create_repo(repo_id, private=private, exist_ok=True, token=token)
    return upload_folder(
        folder,
        repo_id,
        replaced_files=replaced,
        token=token,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
    )


# ---------------------------------------------------------------------------------------------- the Space
def render_space(model: str = TESTBED, title: str | None = None) -> dict[str, bytes]:
    """{path in the Space repo: bytes} of the template in `hub_cards/space/` for `model` (Hub id or "testbed")."""
    if model != TESTBED and not is_hub_id(model):
        raise ValueError(
            f"`model` must be a Hub model id 'namespace/name' or {TESTBED!r}, got {model!r}: a Space cannot read a "
            "local folder (push it first with `hf-tokenprune push`)"
        )
    app = (SPACE_TEMPLATE_DIR / "app.py").read_text(encoding="utf-8")
    if app.count(APP_MODEL_LINE) != 1:
        raise ValueError(f"{SPACE_TEMPLATE_DIR / 'app.py'} must hold the line {APP_MODEL_LINE!r} exactly once")
    app = app.replace(APP_MODEL_LINE, f"MODEL = {json.dumps(model)}")
    card = SpaceCard.from_template(
        SpaceCardData(
            title=title or "Visual-token pruning",
            sdk="gradio",
            sdk_version=GRADIO_SDK_VERSION,
            app_file="app.py",
            models=[] if model == TESTBED else [model],
            tags=["hf-tokenprune", "token-pruning"],
        ),
        template_path=str(SPACE_TEMPLATE_DIR / "README.md"),
        model=model,
        testbed=model == TESTBED,
    )
    return {
        "app.py": app.encode("utf-8"),
        "requirements.txt": (SPACE_TEMPLATE_DIR / "requirements.txt").read_bytes(),
        "README.md": (str(card).rstrip("\n") + "\n").encode("utf-8"),
    }


def push_space(
    repo_id: str,
    model: str = TESTBED,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
):
    """Create the Gradio Space `repo_id` when missing and upload the rendered template in one commit.

    Everything is rendered and checked before the first network call. Returns the CommitInfo.
    """
    if not is_hub_id(repo_id) or "/" not in repo_id:
        raise ValueError(f"`repo_id` must be a Hub repo id 'namespace/name', got {repo_id!r}")
    files = render_space(model)
    HfApi().create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True, token=token)
    return upload_folder(
        None,
        repo_id,
        replaced_files=files,
        repo_type="space",
        commit_message=commit_message or f"Space for {model}: what visual-token pruning keeps, and what it costs",
        token=token,
    )
