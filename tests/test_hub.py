"""Hub packaging: `save_pretrained` (adapter / merged), loading through `AutoModel...` with remote code, offline
loading by repo id from the Hub cache without `hf_tokenprune`, atomic writes, clear errors, `push_to_hub`.

Oracle throughout: the in-memory pruned model that was saved (tokens and keep masks must be identical), or the stock
`transformers` class for the base weights of a merged repo.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText
from transformers.dynamic_module_utils import get_relative_import_files

import hf_tokenprune.modeling.hub_io as hub_io_module
from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.testing import BUILDERS, IMAGE_SIZES, build_inputs, make_samples, place_in_hf_cache

ARCHS = tuple(BUILDERS)
LEARNED = ("visionselector", "autoselect", "reconstruction", "questionselector")
MODELING = Path(__file__).resolve().parents[1] / "modeling"
ROOT = Path(__file__).resolve().parents[1]


def randomized_pruned(arch: str, method: str = "visionselector", budget=0.25, seed: int = 0):
    """(stock base, pruned model) with the selector's weights drawn at random, so the selection is non-trivial."""
    base = BUILDERS[arch]()
    pruned = get_pruned_model(base, TokenPruneConfig(method=method, budget=budget))
    if pruned.token_selector is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for tensor in pruned.token_selector.parameters():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
    return base, pruned


def inputs_for(arch: str) -> dict:
    return build_inputs(arch, make_samples([1, 1], IMAGE_SIZES[arch][:2] * (2 // len(IMAGE_SIZES[arch][:2])), seed=3))


def generated(model, inputs: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, **kwargs)
    return out.sequences, out.keep_mask


def selector_param_bytes(pruned) -> int:
    return sum(p.numel() * p.element_size() for p in pruned.token_selector.parameters())


def saved_adapter(tmp_path: Path, arch: str, method: str = "visionselector", **save_kwargs):
    base, pruned = randomized_pruned(arch, method)
    base.save_pretrained(tmp_path / "base")
    pruned.save_pretrained(tmp_path / "repo", base_model_name_or_path=str(tmp_path / "base"), **save_kwargs)
    return base, pruned, tmp_path / "repo"


def is_base_weights(name: str) -> bool:
    return name.startswith("model") and (name.endswith(".safetensors") or name.endswith(".safetensors.index.json"))


def remote_code_files(arch: str) -> set[str]:
    entry = MODELING / f"modeling_pruned_{arch}.py"
    return {entry.name} | {Path(path).name for path in get_relative_import_files(str(entry))}


# ----------------------------------------------------------------------------- adapter and merged forms
@pytest.mark.parametrize("method", [*LEARNED, "divprune"])
@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_round_trip_gives_identical_pruned_tokens(tmp_path, arch, method):
    _, pruned, repo = saved_adapter(tmp_path, arch, method)
    names = {path.name for path in repo.iterdir()}
    assert {"config.json", "token_prune_config.json", "README.md"} | remote_code_files(arch) <= names
    assert not [name for name in names if is_base_weights(name)], "the adapter form stores no base weights"
    config = json.loads((repo / "config.json").read_text())
    class_ref = f"modeling_pruned_{arch}.{type(pruned).__name__}"
    assert config["auto_map"]["AutoModelForImageTextToText"] == class_ref
    assert config["architectures"] == [type(pruned).__name__]
    prune_config = json.loads((repo / "token_prune_config.json").read_text())
    assert prune_config["base_model_name_or_path"] == str(tmp_path / "base")
    assert prune_config["method"] == method and prune_config["base_model_type"] == pruned.config.model_type

    weight_files = [path for path in repo.iterdir() if path.suffix == ".safetensors"]
    if method in LEARNED:
        assert [path.name for path in weight_files] == ["token_selector.safetensors"]
        assert sum(path.stat().st_size for path in weight_files) <= 2 * selector_param_bytes(pruned)
    else:
        assert weight_files == []

    loaded = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    assert type(loaded).__module__.startswith("transformers_modules."), "loaded through the repo's remote code"
    expected_config = dataclasses.replace(pruned.token_prune_config, base_model_name_or_path=str(tmp_path / "base"))
    assert loaded.token_prune_config.to_dict() == expected_config.to_dict()  # the remote code's own config class
    if method in LEARNED:
        for name, tensor in pruned.token_selector.state_dict().items():
            assert torch.equal(loaded.token_selector.state_dict()[name], tensor), name
    inputs = inputs_for(arch)
    sequences, keep_mask = generated(pruned, inputs)
    loaded_sequences, loaded_keep_mask = generated(loaded, inputs)
    assert torch.equal(loaded_keep_mask, keep_mask) and torch.equal(loaded_sequences, sequences)
    assert not keep_mask.all(), "the test must prune something"


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_round_trip_needs_no_base_and_loads_as_stock(tmp_path, arch):
    base, pruned = randomized_pruned(arch)
    pruned.save_pretrained(tmp_path / "merged", merged=True)  # never saved the base anywhere
    names = {path.name for path in (tmp_path / "merged").iterdir()}
    assert {"model.safetensors", "token_selector.safetensors", "config.json", "token_prune_config.json"} <= names
    assert not any(key.startswith("token_selector") for key in load_file(tmp_path / "merged" / "model.safetensors"))

    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    inputs = inputs_for(arch)
    assert all(torch.equal(a, b) for a, b in zip(generated(loaded, inputs), generated(pruned, inputs), strict=True))
    # Without remote code the same repo is the stock base model: same unpruned tokens as the base it came from.
    stock = type(base).from_pretrained(tmp_path / "merged")
    assert type(stock) is type(base)
    expected = base.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(stock.generate(**inputs, max_new_tokens=4, do_sample=False), expected)


def test_dtype_is_honoured_for_base_and_selector(tmp_path):
    _, _, repo = saved_adapter(tmp_path, "llava")
    loaded = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.token_selector.parameters()} == {torch.bfloat16}
    sequences, _ = generated(loaded, inputs_for("llava"))
    assert sequences.shape[1] > inputs_for("llava")["input_ids"].shape[1]


def test_recipe_and_eval_results_travel_with_the_repo(tmp_path):
    recipe = {"method": "visionselector", "learning_rate": 0.03, "max_steps": 60}
    results = {
        "unpruned_accuracy": 0.9,
        "results": [
            {"method": "visionselector", "budget": 0.1, "accuracy": 0.85, "retention": 0.944, "kept_tokens": 2}
        ],
    }
    _, pruned, repo = saved_adapter(tmp_path, "llava", training_recipe=recipe, eval_results=results)
    assert json.loads((repo / "training_recipe.json").read_text()) == recipe
    assert json.loads((repo / "eval_results.json").read_text()) == results
    loaded = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    assert loaded.token_prune_extra_files == {"training_recipe.json": recipe, "eval_results.json": results}
    loaded.save_pretrained(tmp_path / "again")  # base path remembered in the loaded token-prune config
    assert json.loads((tmp_path / "again" / "training_recipe.json").read_text()) == recipe
    again = json.loads((tmp_path / "again" / "token_prune_config.json").read_text())
    assert again["base_model_name_or_path"] == str(tmp_path / "base")
    # A trainer checkpoint's recipe is carried by get_pruned_model into the next save too.
    fresh = get_pruned_model(BUILDERS["llava"](), repo)
    assert fresh.token_prune_extra_files["training_recipe.json"] == recipe


# ----------------------------------------------------------------------------- offline by repo id, no hf_tokenprune
SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_tokenprune"] = None  # importing hf_tokenprune must fail in this process
    try:
        import hf_tokenprune  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_tokenprune was importable")
    import torch
    from transformers import AutoModelForImageTextToText

    jobs = json.loads(sys.argv[1])
    results = {}
    for job in jobs:
        inputs = torch.load(job["inputs"], weights_only=True)
        model = AutoModelForImageTextToText.from_pretrained(job["repo_id"], trust_remote_code=True, device_map="cpu")
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        half = AutoModelForImageTextToText.from_pretrained(job["repo_id"], trust_remote_code=True, dtype=torch.bfloat16)
        dtypes = sorted({str(p.dtype) for p in half.parameters()})
        selector_dtypes = sorted({str(p.dtype) for p in half.token_selector.parameters()})
        results[job["repo_id"]] = {
            "sequences": out.sequences.tolist(),
            "keep_mask": out.keep_mask.tolist(),
            "dtypes": dtypes,
            "selector_dtypes": selector_dtypes,
            "devices": sorted({p.device.type for p in model.parameters()}),
        }
    print("RESULTS" + json.dumps(results))
    """
)


def test_offline_load_by_repo_id_from_the_hub_cache_without_hf_tokenprune(tmp_path):
    cache = tmp_path / "hub"
    jobs, expected = [], {}
    for arch in ARCHS:
        base, pruned = randomized_pruned(arch)
        base.save_pretrained(tmp_path / f"{arch}-base")
        base_id = f"tiny-org/{arch}-base"
        commit = place_in_hf_cache(tmp_path / f"{arch}-base", base_id, cache)
        for form in ("adapter", "merged"):
            repo_id = f"tiny-org/{arch}-visionselector-{form}"
            pruned.save_pretrained(
                tmp_path / repo_id,
                merged=form == "merged",
                base_model_name_or_path=base_id,
                base_model_revision=commit,  # the adapter's base is fetched at this exact commit
                repo_id=repo_id,
            )
            place_in_hf_cache(tmp_path / repo_id, repo_id, cache)
            inputs = inputs_for(arch)
            torch.save(inputs, tmp_path / f"{arch}-inputs.pt")
            jobs.append({"repo_id": repo_id, "inputs": str(tmp_path / f"{arch}-inputs.pt")})
            expected[repo_id] = generated(pruned, inputs)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, json.dumps(jobs)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    assert set(results) == set(expected)
    for repo_id, (sequences, keep_mask) in expected.items():
        assert results[repo_id]["sequences"] == sequences.tolist(), repo_id
        assert results[repo_id]["keep_mask"] == keep_mask.tolist(), repo_id
        assert results[repo_id]["dtypes"] == ["torch.bfloat16"], repo_id
        assert results[repo_id]["selector_dtypes"] == ["torch.bfloat16"], repo_id
        assert results[repo_id]["devices"] == ["cpu"], repo_id
    assert (tmp_path / "modules").is_dir(), "the remote code was loaded from the repos"


# ----------------------------------------------------------------------------- clear errors, nothing half-made
def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


ERROR_CASES = {
    "width": (
        lambda repo: edit_json(repo / "token_prune_config.json", input_dim=31),
        r"token_prune_config.json.*input_dim",
    ),
    "model_type": (
        lambda repo: edit_json(repo / "token_prune_config.json", base_model_type="qwen2_5_vl"),
        r"token_prune_config.json.*(base_model_type|qwen2_5_vl)",
    ),
    "unknown_method": (
        lambda repo: edit_json(repo / "token_prune_config.json", method="nope"),
        r"token_prune_config.json.*method",
    ),
    "newer_format": (
        lambda repo: edit_json(repo / "token_prune_config.json", format_version=99),
        r"token_prune_config.json.*format_version",
    ),
    "missing_weights": (lambda repo: (repo / "token_selector.safetensors").unlink(), r"token_selector.safetensors"),
    "corrupt_weights": (
        lambda repo: (repo / "token_selector.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"),
        r"token_selector.safetensors.*not a readable safetensors",
    ),
    "truncated_weights": (
        lambda repo: (repo / "token_selector.safetensors").write_bytes(
            (repo / "token_selector.safetensors").read_bytes()[:-16]
        ),
        r"token_selector.safetensors",
    ),
    "other_selector_weights": (
        lambda repo: save_file({"weight": torch.zeros(3)}, str(repo / "token_selector.safetensors")),
        r"token_selector.safetensors.*does not match",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_repos_fail_with_errors_naming_the_file(tmp_path, case):
    base, _, repo = saved_adapter(tmp_path, "llava")
    corrupt, pattern = ERROR_CASES[case]
    corrupt(repo)
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    with pytest.raises((ValueError, FileNotFoundError), match=pattern):
        AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    with pytest.raises((ValueError, FileNotFoundError), match=pattern):
        get_pruned_model(base, repo)
    assert type(base) is type(BUILDERS["llava"]()) and not hasattr(base, "token_selector")
    assert all(torch.equal(tensor, before[name]) for name, tensor in base.state_dict().items())


def test_selector_for_another_base_is_refused(tmp_path):
    """A real width mismatch: the adapter's base changed to wider vision features; and another model type."""
    _, _, repo = saved_adapter(tmp_path, "llava")
    config = copy.deepcopy(BUILDERS["llava"]().config)
    config.text_config.hidden_size = 48  # the visionselector reads projector outputs, as wide as the LLM
    with pytest.raises(ValueError, match=r"token_prune_config.json.*input_dim"):
        get_pruned_model(type(BUILDERS["llava"]())(config), repo)
    BUILDERS["qwen2_5_vl"]().save_pretrained(tmp_path / "qwen")
    edit_json(repo / "token_prune_config.json", base_model_name_or_path=str(tmp_path / "qwen"))
    with pytest.raises(ValueError, match=r"token_prune_config.json.*'llava'.*'qwen2_5_vl'"):
        AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    with pytest.raises(ValueError, match=r"token_prune_config.json.*base_model_type"):
        get_pruned_model(BUILDERS["qwen2_5_vl"](), repo)


def test_hub_base_revision_is_pinned_from_the_local_cache(tmp_path, monkeypatch):
    class Resolved(str):
        resolved = "0123abcd" * 5

    asked = []
    monkeypatch.setattr(
        hub_io_module, "resolve_revision", lambda repo, rev, **kw: asked.append((repo, kw)) or Resolved()
    )
    _, pruned = randomized_pruned("llava")
    pruned.save_pretrained(tmp_path / "repo", base_model_name_or_path="org/base")
    assert asked == [("org/base", {"local_files_only": True})], "never a network call"
    saved = json.loads((tmp_path / "repo" / "token_prune_config.json").read_text())
    assert saved["base_model_revision"] == Resolved.resolved
    pruned.save_pretrained(tmp_path / "pinned", base_model_name_or_path="org/base", base_model_revision="v1")
    assert json.loads((tmp_path / "pinned" / "token_prune_config.json").read_text())["base_model_revision"] == "v1"


def test_adapter_without_a_base_path_is_refused_before_writing(tmp_path):
    _, pruned = randomized_pruned("llava")
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        pruned.save_pretrained(tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- atomic writes
def boom(*args, **kwargs):
    raise OSError("disk full")


def test_failed_save_leaves_no_directory(tmp_path, monkeypatch):
    base, pruned = randomized_pruned("llava")
    monkeypatch.setattr(hub_io_module, "save_selector_weights", boom)
    with pytest.raises(OSError, match="disk full"):
        pruned.save_pretrained(tmp_path / "repo", base_model_name_or_path="org/base")
    assert list(tmp_path.iterdir()) == [], "no repo and no staging leftovers"


def test_failed_resave_keeps_the_previous_complete_save(tmp_path, monkeypatch):
    base, pruned, repo = saved_adapter(tmp_path, "llava")
    before = {path.name: path.read_bytes() for path in repo.iterdir()}
    with torch.no_grad():
        next(pruned.token_selector.parameters()).add_(1.0)
    monkeypatch.setattr(hub_io_module, "save_selector_weights", boom)
    with pytest.raises(OSError, match="disk full"):
        pruned.save_pretrained(repo, base_model_name_or_path=str(tmp_path / "base"))
    assert {path.name: path.read_bytes() for path in repo.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["base", "repo"]


def test_resave_replaces_our_files_and_keeps_others(tmp_path):
    """Merged then adapter into one folder: no stale base weights (it must load as an adapter); a processor file stays."""
    base, pruned = randomized_pruned("llava")
    base.save_pretrained(tmp_path / "base")
    repo = tmp_path / "repo"
    pruned.save_pretrained(repo, merged=True)
    (repo / "preprocessor_config.json").write_text("{}")
    pruned.save_pretrained(repo, base_model_name_or_path=str(tmp_path / "base"))
    names = sorted(path.name for path in repo.iterdir())
    assert "preprocessor_config.json" in names and not [name for name in names if is_base_weights(name)]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "no staging leftovers"
    loaded = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    inputs = inputs_for("llava")
    assert all(torch.equal(a, b) for a, b in zip(generated(loaded, inputs), generated(pruned, inputs), strict=True))


# ----------------------------------------------------------------------------- push_to_hub: one commit
def only_commit(hub_calls) -> tuple[str, dict[str, bytes], dict]:
    """(repo id, uploaded files, commit kwargs) of the single commit recorded by the `hub_calls` fixture."""
    ((_, repo_id, kwargs),) = [call for call in hub_calls if call[0] == "create_commit"]
    return repo_id, kwargs["uploaded"], kwargs


def test_push_to_hub_uploads_card_and_files_in_one_commit(tmp_path, hub_calls):
    base, pruned = randomized_pruned("llava")
    pruned.push_to_hub("tiny-org/pushed", base_model_name_or_path="tiny-org/base", private=True)
    assert [call[:2] for call in hub_calls if call[0] == "create_repo"] == [("create_repo", "tiny-org/pushed")]
    assert hub_calls[0][2]["private"] is True
    repo_id, files, _ = only_commit(hub_calls)
    pruned.save_pretrained(tmp_path / "local", base_model_name_or_path="tiny-org/base", repo_id="tiny-org/pushed")
    local = {path.name: path.read_bytes() for path in (tmp_path / "local").iterdir()}
    assert repo_id == "tiny-org/pushed" and set(files) == set(local)
    assert files["token_selector.safetensors"] == local["token_selector.safetensors"]
    assert files["README.md"] == local["README.md"] and b"tiny-org/pushed" in files["README.md"]


def test_save_pretrained_push_to_hub_route(tmp_path, hub_calls):
    base, pruned = randomized_pruned("llava")
    pruned.save_pretrained(tmp_path / "repo", base_model_name_or_path="tiny-org/base", push_to_hub=True, repo_id="o/r")
    repo_id, files, _ = only_commit(hub_calls)
    assert repo_id == "o/r" and set(files) == {path.name for path in (tmp_path / "repo").iterdir()}


def test_push_to_hub_checks_before_creating_the_repo(hub_calls):
    _, pruned = randomized_pruned("llava")
    with pytest.raises(ValueError, match="eval_results"):
        pruned.push_to_hub("o/r", base_model_name_or_path="o/base", eval_results={"results": []})
    assert hub_calls == []


def test_push_to_hub_to_a_branch_names_it_in_the_card(hub_calls):
    _, pruned = randomized_pruned("llava")
    pruned.push_to_hub("o/r", base_model_name_or_path="o/base", revision="dev", tags=["extra-tag"])
    _, files, kwargs = only_commit(hub_calls)
    branches = [(call[1], call[2]["branch"]) for call in hub_calls if call[0] == "create_branch"]
    assert kwargs["revision"] == "dev" and branches == [("o/r", "dev")]
    card = files["README.md"].decode()
    assert 'revision="dev"' in card and "extra-tag" in card and "hf-tokenprune" in card


def test_push_to_hub_refuses_an_adapter_of_a_local_base(tmp_path, hub_calls):
    _, pruned = randomized_pruned("llava")
    (tmp_path / "base").mkdir()
    with pytest.raises(ValueError, match="local folder"):
        pruned.push_to_hub("o/r", base_model_name_or_path=str(tmp_path / "base"))
    assert hub_calls == []


def test_adapter_next_to_its_base_names_it_relative_to_its_folder(tmp_path, monkeypatch):
    """A bundle of base + adapters (as the default model ships) loads from any working directory."""
    base, pruned = randomized_pruned("llava")
    base.save_pretrained(tmp_path / "bundle" / "base")
    pruned.save_pretrained(tmp_path / "bundle" / "visionselector", base_model_name_or_path="../base")
    monkeypatch.chdir(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained("bundle/visionselector", trust_remote_code=True)
    inputs = inputs_for("llava")
    assert all(torch.equal(a, b) for a, b in zip(generated(loaded, inputs), generated(pruned, inputs), strict=True))
