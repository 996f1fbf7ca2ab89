"""The README's quick-start snippet runs as pasted and prints a pruned answer."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str, language: str) -> str:
    section = README.read_text(encoding="utf-8").split(heading, 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_quick_start_snippet_prints_a_pruned_answer():
    printed = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_block("## Quick start", "python"), "README.md", "exec"), namespace)
    inputs, out = namespace["inputs"], namespace["out"]
    total = int((inputs["input_ids"] == namespace["base"].config.image_token_id).sum())
    expected_kept = max(1, math.floor(0.2 * total + 0.5))
    lines = printed.getvalue().splitlines()
    assert lines[0] == f"kept {expected_kept} of {total} visual tokens"
    assert expected_kept < total
    new_tokens = out.sequences[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) == 8
    assert lines[1] == "answer: " + namespace["tokenizer"].decode(new_tokens)


def test_ci_runs_the_readme_test_command():
    commands = readme_block("# hf-tokenprune", "bash").strip().splitlines()
    assert len(commands) == 2
    ci_script = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "sed -n 2p" in ci_script or commands[1] in ci_script
