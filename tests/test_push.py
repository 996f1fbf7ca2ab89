"""`push_folder` / `hf-tokenprune push`: one commit of every file plus a card rendered for the repo id; no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hf_tokenprune import TokenPruneConfig, get_pruned_model, push_folder, render_model_card
from hf_tokenprune.cli import main
from hf_tokenprune.hub import card_bytes
from hf_tokenprune.testing import BUILDERS

REPO_ID = "someone/tiny-pruned-llava"
BASE_ID = "org/tiny-llava"
EVAL_RESULTS = {
    "unpruned_accuracy": 0.5,
    "results": [{"method": "visionselector", "budget": 0.25, "accuracy": 0.375, "retention": 0.75, "kept_tokens": 4}],
}


def saved(folder: Path, method: str = "visionselector") -> Path:
    model = get_pruned_model(BUILDERS["llava"](), TokenPruneConfig(method=method, budget=0.25))
    model.save_pretrained(folder, base_model_name_or_path=BASE_ID)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def operation_bytes(operation) -> bytes:
    source = operation.path_or_fileobj
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def check_commit(calls, folder: Path, before: dict[str, bytes], expected_card: bytes, replaced=None):
    """One commit holding every file of `folder` (as on disk) plus README.md = the card; the folder is untouched."""
    commits = [call for call in calls if call[0] == "create_commit"]
    assert len(commits) == 1
    _, repo_id, kwargs = commits[0]
    assert repo_id == REPO_ID
    uploaded = {operation.path_in_repo: operation_bytes(operation) for operation in kwargs["operations"]}
    assert len(uploaded) == len(kwargs["operations"])
    assert set(uploaded) == set(before) | {"README.md"} | set(replaced or {})
    for name, data in before.items():
        if name != "README.md" and name not in (replaced or {}):
            assert uploaded[name] == data, name
    for name, data in (replaced or {}).items():
        assert uploaded[name] == data, name
    assert uploaded["README.md"] == expected_card
    assert snapshot(folder) == before
    return kwargs, uploaded["README.md"].decode("utf-8")


def test_push_uploads_every_file_and_a_card_for_the_repo_id(tmp_path, hub_calls):
    folder = saved(tmp_path / "repo")
    before = snapshot(folder)
    assert {"config.json", "token_prune_config.json", "token_selector.safetensors", "README.md"} <= set(before)

    commit = push_folder(folder, REPO_ID, token="hf_secret", private=True)

    assert commit.commit_url == f"https://huggingface.co/{REPO_ID}/commit/abc123"
    assert hub_calls[0] == ("create_repo", REPO_ID, {"private": True, "exist_ok": True, "token": "hf_secret"})
    assert [call[0] for call in hub_calls] == ["create_repo", "create_commit"]
    kwargs, card = check_commit(hub_calls, folder, before, card_bytes(render_model_card(folder, REPO_ID)))
    assert kwargs["token"] == "hf_secret" and kwargs["create_pr"] is False and kwargs["revision"] is None
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f'"{REPO_ID}", trust_remote_code=True' in code
    assert f'AutoProcessor.from_pretrained("{BASE_ID}")' in code
    assert str(folder.resolve()) not in card  # the on-disk card names the folder; the pushed one the repo


def test_push_with_eval_results_file(tmp_path, hub_calls):
    folder = saved(tmp_path / "repo")
    before = snapshot(folder)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(EVAL_RESULTS))

    push_folder(folder, REPO_ID, eval_results=results)

    expected_card = card_bytes(render_model_card(folder, REPO_ID, eval_results=results))
    _, card = check_commit(hub_calls, folder, before, expected_card, {"eval_results.json": results.read_bytes()})
    assert "| visionselector | 0.25 | 0.375 | 75.0 | 4 |" in card


def test_training_free_folder_needs_no_selector_weights(tmp_path, hub_calls):
    folder = saved(tmp_path / "repo", method="divprune")
    before = snapshot(folder)
    assert "token_selector.safetensors" not in before
    push_folder(folder, REPO_ID)
    check_commit(hub_calls, folder, before, card_bytes(render_model_card(folder, REPO_ID)))


def test_cli_push(tmp_path, hub_calls, capsys):
    folder = saved(tmp_path / "repo")
    before = snapshot(folder)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(EVAL_RESULTS))
    argv = ["push", str(folder), "--repo-id", REPO_ID, "--eval-results", str(results), "--private"]
    argv += ["--revision", "dev", "--token", "hf_secret", "--commit-message", "first upload", "--create-pr"]

    assert main(argv) == 0

    assert capsys.readouterr().out.splitlines()[0] == f"https://huggingface.co/{REPO_ID}/commit/abc123"
    assert [call[0] for call in hub_calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub_calls[0][2] == {"private": True, "exist_ok": True, "token": "hf_secret"}
    assert hub_calls[1][1:] == (REPO_ID, {"branch": "dev", "token": "hf_secret", "exist_ok": True})
    expected_card = card_bytes(render_model_card(folder, REPO_ID, revision="dev", eval_results=results))
    kwargs, card = check_commit(hub_calls, folder, before, expected_card, {"eval_results.json": results.read_bytes()})
    assert kwargs["commit_message"] == "first upload"
    assert kwargs["revision"] == "dev" and kwargs["create_pr"] is True and kwargs["token"] == "hf_secret"
    assert f'"{REPO_ID}", trust_remote_code=True, dtype="auto", revision="dev"' in card


def test_cli_push_with_folder_flag_and_defaults(tmp_path, hub_calls):
    folder = saved(tmp_path / "repo")
    assert main(["push", "--folder", str(folder), "--repo-id", REPO_ID]) == 0
    assert hub_calls[0] == ("create_repo", REPO_ID, {"private": None, "exist_ok": True, "token": None})
    assert hub_calls[-1][2]["create_pr"] is False and hub_calls[-1][2]["revision"] is None


def _edit_json(path: Path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _drop_auto_map(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "corrupt, error, match",
    [
        (lambda f: (f / "token_prune_config.json").unlink(), FileNotFoundError, "token_prune_config.json"),
        (lambda f: (f / "token_selector.safetensors").unlink(), FileNotFoundError, "token_selector.safetensors"),
        (lambda f: (f / "config.json").unlink(), FileNotFoundError, "config.json"),
        (_drop_auto_map, ValueError, "config.json.*auto_map"),
        (lambda f: (f / "modeling_pruned_llava.py").unlink(), FileNotFoundError, "modeling_pruned_llava.py"),
        (lambda f: (f / "selection_ops.py").unlink(), FileNotFoundError, "selection_ops.py"),
        (
            lambda f: _edit_json(f / "token_prune_config.json", base_model_name_or_path="/home/me/base"),
            ValueError,
            "base_model_name_or_path",
        ),
        (
            lambda f: (f / "eval_results.json").write_text(json.dumps({**EVAL_RESULTS, "results": [{"method": "x"}]})),
            ValueError,
            r"eval_results.json: results\[0\]: missing field",
        ),
    ],
    ids=[
        "no-prune-config",
        "no-selector-weights",
        "no-config",
        "no-auto-map",
        "no-model-file",
        "no-imported-sibling",
        "local-base",
        "bad-eval-in-folder",
    ],
)
def test_bad_folder_fails_before_any_network_call(tmp_path, hub_calls, corrupt, error, match):
    folder = saved(tmp_path / "repo")
    corrupt(folder)
    with pytest.raises(error, match=match):
        push_folder(folder, REPO_ID)
    assert hub_calls == []


@pytest.mark.parametrize(
    "results, match",
    [
        ({**EVAL_RESULTS, "results": [{**EVAL_RESULTS["results"][0], "retention": 75.0}]}, r"results\[0\].retention"),
        ({**EVAL_RESULTS, "results": [{**EVAL_RESULTS["results"][0], "budget": 1.5}]}, r"results\[0\].budget"),
        ({**EVAL_RESULTS, "results": []}, "`results` must be a non-empty list"),
        ({**EVAL_RESULTS, "extra": 1}, r"unknown field\(s\) \['extra'\]"),
    ],
    ids=["percent-retention", "bad-budget", "no-rows", "unknown-field"],
)
def test_bad_eval_results_fail_before_any_network_call(tmp_path, hub_calls, results, match):
    folder = saved(tmp_path / "repo")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: .*{match}"):
        push_folder(folder, REPO_ID, eval_results=path)
    with pytest.raises(ValueError, match=match):
        main(["push", str(folder), "--repo-id", REPO_ID, "--eval-results", str(path)])
    assert hub_calls == []


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "/abs/path"])
def test_bad_repo_id_fails_before_any_network_call(tmp_path, hub_calls, repo_id):
    folder = saved(tmp_path / "repo", method="uniform")
    with pytest.raises(ValueError, match="repo_id"):
        push_folder(folder, repo_id)
    assert hub_calls == []
