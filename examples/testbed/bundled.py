"""The bundled default model: writing it from a `reproduce` run (`bundle`) and its Hub-layout repos (`hub_layout`).

`default_model/` holds only what training produced: `base/` (weights, configs, tokenizer, processor, chat template)
and per learned method the four files of `BUNDLED_ADAPTER_FILES`. The adapter repos a Hub user would download
(remote code, `config.json` with `auto_map`, model card) are written by the pruned class's own `save_pretrained` on
first use, into a cache folder named by a hash of everything they are made from, so they always carry the current
code and nothing of them is committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import site
import sysconfig
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import huggingface_hub.constants
import transformers
from transformers import Qwen2_5_VLForConditionalGeneration

import hf_tokenprune
import hf_tokenprune.modeling
from hf_tokenprune import get_pruned_model, write_model_card
from hf_tokenprune.hub import MODEL_CARD_TEMPLATE

from .model import BUNDLED_METHODS, BUNDLED_TASK, DEFAULT_ADAPTERS, DEFAULT_DIR, DEFAULT_MODEL_DIR

#: What a trained selector's adapter contributes to the bundle: its weights, its config, how it was trained, its eval.
BUNDLED_ADAPTER_FILES = (
    "token_selector.safetensors",
    "token_prune_config.json",
    "training_recipe.json",
    "eval_results.json",
)
#: What `reproduce` writes into a base model's folder besides the model, processor and tokenizer files.
_BASE_RUN_FILES = ("trainer", "vision-trainer", "*_log.json")


@contextlib.contextmanager
def _staged_folder(target: Path, replace: bool) -> Iterator[Path]:
    """Yield a staging folder beside `target` (not yet created); on success it becomes `target` in one rename.

    `replace=False`: a `target` that appeared meanwhile (another process made the same folder) wins and the staging
    folder is dropped. `replace=True`: an existing `target` is moved aside and removed after the rename, so a reader
    finds the old folder or the new one, never half of either.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    staging = target.with_name(f".{target.name}.{tag}.partial")
    try:
        yield staging
        if replace and target.exists():
            old = target.with_name(f".{target.name}.{tag}.old")
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
            return
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- writing the bundle
def source_bundle_dir() -> Path | None:
    """`examples/testbed/default_model` of the source checkout this package runs from; None when it is installed."""
    package = Path(__file__).resolve().parent
    if package.parent.name == "examples" and (package.parents[1] / "pyproject.toml").is_file():
        return package / "default_model"
    return None


def _site_packages() -> list[Path]:
    paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    paths |= set(getattr(site, "getsitepackages", list)())
    if site.ENABLE_USER_SITE:
        paths.add(site.getusersitepackages())
    return [Path(path).resolve() for path in paths]


def bundle(output: Path, adapters: Mapping[str, Path], bundle_dir: str | os.PathLike | None = None) -> Path:
    """Write the trained base (`output/base`) and each adapter's `BUNDLED_ADAPTER_FILES` into `bundle_dir` (default:
    the source checkout's `examples/testbed/default_model`), one folder at a time, each replaced in one rename.

    Refuses a folder inside site-packages (an installed package is not where a model is developed) and an adapter
    that lacks one of its files, before anything is written. Returns the bundle folder.
    """
    target = Path(bundle_dir) if bundle_dir is not None else source_bundle_dir()
    if target is None:
        raise ValueError(
            "`bundle_dir` is needed: this testbed runs from an installed package, not from a source checkout whose "
            "examples/testbed/default_model it could replace"
        )
    target = target.resolve()
    for packages in _site_packages():
        if target == packages or packages in target.parents:
            raise ValueError(f"`bundle_dir` {str(target)!r} is inside site-packages ({packages}); give a source folder")
    for method, adapter in adapters.items():
        missing = [name for name in BUNDLED_ADAPTER_FILES if not (Path(adapter) / name).is_file()]
        if missing:
            raise FileNotFoundError(f"the {method} adapter {str(adapter)!r} lacks {missing}")
    with _staged_folder(target / "base", replace=True) as staging:
        shutil.copytree(Path(output) / "base", staging, ignore=shutil.ignore_patterns(*_BASE_RUN_FILES))
    for method, adapter in adapters.items():
        with _staged_folder(target / method, replace=True) as staging:
            staging.mkdir()
            for name in BUNDLED_ADAPTER_FILES:
                shutil.copyfile(Path(adapter) / name, staging / name)
    return target


# ----------------------------------------------------------------------------------------------- the Hub layout
#: The usage snippet of a bundled adapter's card: it runs as pasted wherever hf-tokenprune is installed (the Hub
#: layout is written to the Hugging Face cache on first use), on the bundled VLM's own task.
CARD_USAGE = """\
from transformers import AutoModelForImageTextToText

from hf_tokenprune_testbed.bundled import hub_adapter
from hf_tokenprune_testbed.model import build_batch, load_testbed
from hf_tokenprune_testbed.scenes import task_example
from hf_tokenprune_testbed.tasks import SPLIT_SEED_OFFSETS

# This repository as the bundled testbed ships it, and the bundled base model's processor.
model = AutoModelForImageTextToText.from_pretrained(hub_adapter("{method}"), trust_remote_code=True)
_, processor = load_testbed()
example = task_example(SPLIT_SEED_OFFSETS["test"], "{task}")  # the first test-split example of the task
batch = build_batch(processor, [example.image], [example.question])
output = model.generate(**batch, max_new_tokens=2, prune_budget=0.1)
answer = processor.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0]
print(example.question, "->", answer.split()[0], "(expected:", example.answer + ")")
"""


def _layout_sources() -> list[tuple[str, Path]]:
    """(name, file) of everything the Hub-layout repos are made from: the bundle, the remote code, the card template."""
    modeling = Path(hf_tokenprune.modeling.__file__).resolve().parent
    sources = [(f"bundle/{path.relative_to(DEFAULT_DIR).as_posix()}", path) for path in DEFAULT_DIR.rglob("*")]
    sources += [(f"modeling/{path.name}", path) for path in modeling.glob("*.py")]
    sources += [("hub_cards/model_card.md", MODEL_CARD_TEMPLATE), ("bundled.py", Path(__file__).resolve())]
    return sorted((name, path) for name, path in sources if path.is_file())


def layout_hash() -> str:
    """Hash of the bundled files, the modeling code, the card template, this module (the cards' usage snippet) and the
    library versions (16 hex digits)."""
    digest = hashlib.sha256(
        f"hf_tokenprune {hf_tokenprune.__version__} transformers {transformers.__version__}".encode()
    )
    for name, path in _layout_sources():
        digest.update(f"\0{name}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$HF_HOME/hf_tokenprune` (`HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, then ~/.cache/huggingface)."""
    return Path(huggingface_hub.constants.HF_HOME) / "hf_tokenprune"


def hub_layout(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the bundled default as Hub repos, written on first use: `base/` (a copy of the bundled base) and
    per learned method an adapter repo (`base_model_name_or_path` "../base") that
    `AutoModelForImageTextToText.from_pretrained(folder / method, trust_remote_code=True)` loads with only
    `transformers` installed.

    The folder is `cache_dir` (default `default_cache_dir()`) / `testbed-<layout_hash()>`, built in a staging folder
    and renamed into place, so a reader never sees a partial one and a change of code or bundle gets a new folder.
    """
    target = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"testbed-{layout_hash()}"
    if target.is_dir():
        return target
    with _staged_folder(target, replace=False) as staging:
        shutil.copytree(DEFAULT_MODEL_DIR, staging / "base")
        base = Qwen2_5_VLForConditionalGeneration.from_pretrained(staging / "base").eval()
        for method in BUNDLED_METHODS:
            pruned = get_pruned_model(base, DEFAULT_ADAPTERS[method])
            pruned.save_pretrained(staging / method, base_model_name_or_path="../base")
            usage = CARD_USAGE.format(method=method, task=BUNDLED_TASK)
            write_model_card(staging / method, model_path=target / method, usage=usage)
    return target


def hub_adapter(method: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hub-layout adapter repo of the bundled `method` selector (see `hub_layout`)."""
    if method not in BUNDLED_METHODS:
        raise ValueError(f"`method` must be one of the bundled learned methods {BUNDLED_METHODS}, got {method!r}")
    return hub_layout(cache_dir) / method


__all__ = [
    "BUNDLED_ADAPTER_FILES",
    "CARD_USAGE",
    "bundle",
    "default_cache_dir",
    "hub_adapter",
    "hub_layout",
    "layout_hash",
]
