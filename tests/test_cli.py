"""The `hf-tokenprune` dispatcher; each command's own behaviour is tested with that command (demo: test_testbed.py)."""

from __future__ import annotations

import dataclasses

import pytest

from hf_tokenprune.cli import COMMANDS, load_command, main


def test_unknown_command_exits_2(capsys):
    assert main(["nope"]) == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_renders_and_lists_every_field(command, capsys):
    """Oracle: the command's own dataclass fields. argparse %-formats help strings, so a bare '%' breaks --help."""
    classes, _ = load_command(command)
    classes = classes if isinstance(classes, (list, tuple)) else (classes,)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.init:
                assert f"--{field.name}" in shown, (command, field.name)
