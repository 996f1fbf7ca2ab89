"""The `hf-tokenprune` dispatcher; each command's own behaviour is tested with that command (demo: test_testbed.py)."""

from __future__ import annotations

from hf_tokenprune.cli import main


def test_unknown_command_exits_2(capsys):
    assert main(["nope"]) == 2
    assert "usage" in capsys.readouterr().err
