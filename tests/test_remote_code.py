"""`modeling/` ships to the Hub: its files import only the standard library, torch, transformers and each other."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import get_relative_import_files

MODELING = Path(__file__).resolve().parents[1] / "modeling"
FILES = sorted(MODELING.glob("*.py"))
ALLOWED_THIRD_PARTY = {"torch", "transformers"}


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_imports_only_torch_transformers_and_siblings(path):
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
        "builtin_selectors.py",
        "selection_ops.py",
        "token_selectors.py",
        "configuration_token_prune.py",
    } | {path.name for path in MODELING.glob("selector_*.py")}
    assert needed <= reached
