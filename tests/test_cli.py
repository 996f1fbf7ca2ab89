"""`hf-tokenprune demo` prints a pruned answer; bad arguments fail with the argument's name."""

from __future__ import annotations

import math

import pytest

from hf_tokenprune.cli import main


def test_demo_prints_pruned_answer(capsys):
    assert main(["demo", "--budget", "0.25", "--method", "uniform"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = 16  # the demo image: 8 x 8 patches, merged 2 x 2
    assert f"visual tokens kept: {max(1, math.floor(0.25 * total + 0.5))} of {total}" in lines
    assert any(line.startswith("answer: ") for line in lines)


def test_demo_rejects_bad_budget():
    with pytest.raises(ValueError, match="prune_budget"):
        main(["demo", "--budget", "0"])


def test_unknown_command_exits_2(capsys):
    assert main(["nope"]) == 2
    assert "usage" in capsys.readouterr().err
