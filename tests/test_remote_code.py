"""`modeling/` ships to the Hub: its files import only the standard library, torch, transformers, what transformers
itself requires (so every Hub user has it: safetensors, huggingface_hub), and each other."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import get_relative_import_files

MODELING = Path(__file__).resolve().parents[1] / "modeling"
FILES = sorted(MODELING.glob("*.py"))


def _hard_requirements(distribution: str) -> set[str]:
    """Import names of `distribution`'s unconditional requirements (no extra, no environment marker)."""
    names = set()
    for requirement in importlib.metadata.requires(distribution) or []:
        if ";" in requirement:
            continue
        names.add(re.split(r"[\s<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("-", "_"))
    return names


ALLOWED_THIRD_PARTY = {"torch", "transformers"} | _hard_requirements("transformers")


def test_allowed_imports_are_what_a_transformers_install_brings():
    assert {"safetensors", "huggingface_hub"} <= ALLOWED_THIRD_PARTY
    assert not {"peft", "accelerate", "hf_tokenprune", "datasets"} & ALLOWED_THIRD_PARTY


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_imports_only_torch_transformers_their_requirements_and_siblings(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots = [node.module.split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in sys.stdlib_module_names or root in ALLOWED_THIRD_PARTY, f"{path.name} imports {root}"


@pytest.mark.parametrize("entry", sorted(MODELING.glob("modeling_pruned_*.py")), ids=lambda path: path.name)
def test_hub_loader_copies_every_file_a_model_needs(entry):
    """transformers copies the files reachable by relative imports; they must include every selector."""
    reached = {Path(name).name for name in get_relative_import_files(str(entry))}
    needed = {
        "pruning.py",
        "llm_pruning.py",
        "builtin_selectors.py",
        "selection_ops.py",
        "token_selectors.py",
        "configuration_token_prune.py",
    } | {path.name for path in MODELING.glob("selector_*.py")}
    assert needed <= reached
