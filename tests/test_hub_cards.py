"""The model card `save_pretrained` writes: YAML metadata, tables filled from the saved JSON, a usage snippet that runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from hf_tokenprune import TokenPruneConfig, get_pruned_model, render_model_card
from hf_tokenprune.hub import card_bytes
from hf_tokenprune.modeling.pruning import tokens_to_keep
from hf_tokenprune.testing import BUILDERS, place_in_hf_cache, tiny_processor

ARCHS = ("qwen2_5_vl", "llava", "llava_next", "internvl")
EVAL_RESULTS = {
    "unpruned_accuracy": 0.8125,
    "results": [
        {"method": "visionselector", "budget": 0.25, "accuracy": 0.75, "retention": 0.923, "kept_tokens": 4},
        {"method": "divprune", "budget": 2, "accuracy": 0.5, "retention": 0.615, "kept_tokens": 2.5},
    ],
}
TRAINING_RECIPE = {"recipe": "visionselector", "learning_rate": 0.0001, "max_steps": 500, "bf16": True}


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def table(text: str, heading: str) -> list[list[str]]:
    """Body rows of the first markdown table under `heading`, as cells (pipes unescaped)."""
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[2:]]


def snippet(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def save(folder: Path, arch: str, merged: bool = False, method: str = "visionselector", budget=0.25, **save_kwargs):
    model = get_pruned_model(BUILDERS[arch](), TokenPruneConfig(method=method, budget=budget))
    model.save_pretrained(folder, merged=merged, **save_kwargs)
    return folder


@pytest.mark.parametrize("merged", [False, True], ids=["adapter", "merged"])
@pytest.mark.parametrize("arch", ARCHS)
def test_card_metadata_and_tables_come_from_the_saved_files(tmp_path, arch, merged):
    base_id = f"org/tiny-{arch}"
    folder = save(
        tmp_path / "repo",
        arch,
        merged,
        base_model_name_or_path=base_id,
        eval_results=EVAL_RESULTS,
        training_recipe=TRAINING_RECIPE,
    )
    text = (folder / "README.md").read_text(encoding="utf-8")

    metadata = front_matter(text)
    assert metadata["base_model"] == base_id
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "image-text-to-text"
    model_type = BUILDERS[arch]().config.model_type
    assert {"hf-tokenprune", "token-pruning", "visionselector", model_type} <= set(metadata["tags"])
    if merged:
        assert "base_model_relation" not in metadata
    else:
        assert metadata["base_model_relation"] == "adapter"
    assert f"**Form:** {'merged' if merged else 'adapter'}." in text

    rows = table(text, "## Results")
    assert len(rows) == len(EVAL_RESULTS["results"])
    for cells, expected in zip(rows, EVAL_RESULTS["results"], strict=True):
        assert cells[0] == expected["method"]
        assert float(cells[1]) == expected["budget"]
        assert float(cells[2]) == expected["accuracy"]
        assert float(cells[3]) == pytest.approx(100 * expected["retention"], abs=0.05)
        assert float(cells[4]) == expected["kept_tokens"]
    assert f"unpruned base model: **{EVAL_RESULTS['unpruned_accuracy']}**" in text

    recipe = {name: value for name, value in table(text, "## Training recipe")}
    assert recipe.keys() == TRAINING_RECIPE.keys()
    for name, value in TRAINING_RECIPE.items():
        assert recipe[name] == (value if isinstance(value, str) else json.dumps(value))

    assert "*VisionSelector: End-to-End Learnable Visual Token Compression for Efficient Multimodal LLMs*" in text
    # The card is a function of the saved files: rendering the finished folder again gives the same bytes.
    assert card_bytes(render_model_card(folder)) == text.encode("utf-8")


def test_training_free_card_without_results_or_recipe(tmp_path):
    folder = save(tmp_path / "repo", "llava", method="divprune", budget=None, base_model_name_or_path="org/tiny")
    assert not (folder / "token_selector.safetensors").exists()
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert "divprune" in front_matter(text)["tags"]
    assert "No training recipe was recorded" in text and "training-free" in text
    assert "No evaluation results were given" in text
    assert "|---|" not in text  # no tables at all
    assert "prune_budget=0.2)" in snippet(text)  # no default budget saved: the snippet still prunes
    assert "*DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models*" in text


def test_merged_card_without_a_recorded_base(tmp_path):
    folder = save(tmp_path / "repo", "llava", merged=True, method="uniform")  # built from a config: no base path
    text = (folder / "README.md").read_text(encoding="utf-8")
    metadata = front_matter(text)
    assert "base_model" not in metadata and "base_model_relation" not in metadata
    assert "records no base model" in snippet(text)


def test_repo_id_goes_into_the_snippet_and_title(tmp_path):
    folder = save(tmp_path / "repo", "llava", base_model_name_or_path="org/tiny")
    card = str(render_model_card(folder, "someone/pruned-llava"))
    code = snippet(card)
    assert '"someone/pruned-llava", trust_remote_code=True' in code
    assert 'AutoProcessor.from_pretrained("org/tiny")' in code
    assert str(folder.resolve()) not in card
    assert "# someone/pruned-llava" in card


# ------------------------------------------------------------------------------------------- validation
def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _edit(path: Path, **changes):
    path.write_text(json.dumps({**_json(path), **changes}), encoding="utf-8")


@pytest.mark.parametrize(
    "corrupt, error, match",
    [
        (lambda f: (f / "config.json").unlink(), FileNotFoundError, "config.json"),
        (lambda f: (f / "config.json").write_text("{nope"), ValueError, "config.json"),
        (lambda f: (f / "token_prune_config.json").unlink(), FileNotFoundError, "token_prune_config.json"),
        (lambda f: _edit(f / "token_prune_config.json", budget=2.5), ValueError, "token_prune_config.json.*budget"),
        (lambda f: _edit(f / "token_prune_config.json", format_version=99), ValueError, "format_version"),
        (lambda f: _edit(f / "token_prune_config.json", method="nope"), ValueError, "token_prune_config.json.*nope"),
        (lambda f: _edit(f / "token_prune_config.json", base_model_type="llava"), ValueError, "base_model_type"),
        (
            lambda f: (f / "eval_results.json").write_text(
                json.dumps({"unpruned_accuracy": 0.8, "results": [{**EVAL_RESULTS["results"][0], "accuracy": "high"}]})
            ),
            ValueError,
            r"eval_results.json: results\[0\].accuracy",
        ),
        (
            lambda f: (f / "eval_results.json").write_text(json.dumps({"results": EVAL_RESULTS["results"]})),
            ValueError,
            "eval_results.json.*unpruned_accuracy",
        ),
        (
            lambda f: (f / "training_recipe.json").write_text(json.dumps({"schedule": {"warmup": 10}})),
            ValueError,
            "training_recipe.json.*schedule",
        ),
    ],
    ids=[
        "no-config",
        "bad-config",
        "no-prune-config",
        "bad-budget",
        "newer-format",
        "unknown-method",
        "other-base-type",
        "bad-accuracy",
        "no-unpruned-accuracy",
        "nested-recipe",
    ],
)
def test_render_names_the_bad_file(tmp_path, corrupt, error, match):
    folder = save(tmp_path / "repo", "qwen2_5_vl", method="uniform", base_model_name_or_path="org/tiny")
    corrupt(folder)
    with pytest.raises(error, match=match):
        render_model_card(folder)


def test_write_model_card_replaces_readme_atomically(tmp_path):
    from hf_tokenprune import write_model_card

    folder = save(tmp_path / "repo", "llava", method="uniform", base_model_name_or_path="org/tiny")
    (folder / "README.md").write_text("old card")
    path = write_model_card(folder, "someone/x")
    assert path == folder / "README.md"
    assert path.read_bytes() == card_bytes(render_model_card(folder, "someone/x"))
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no temp file left behind


# ------------------------------------------------------------------------------------------- the snippet runs
BASE_ID, REPO_ID = "tiny-org/base", "tiny-org/pruned"


def tiny_repo(tmp_path: Path, arch: str, base: str | None = None, repo_id: str | None = None) -> tuple[Path, Path]:
    """A base folder (weights + processor) and an adapter repo saved against `base` (default: that folder)."""
    base_dir = tmp_path / "base"
    BUILDERS[arch]().save_pretrained(base_dir)
    tiny_processor(arch).save_pretrained(base_dir)
    repo = tmp_path / "pruned"
    model = get_pruned_model(BUILDERS[arch](), TokenPruneConfig(method="visionselector", budget=0.25))
    model.save_pretrained(repo, base_model_name_or_path=base or str(base_dir), repo_id=repo_id)
    return base_dir, repo


def test_card_of_an_unpushed_save_names_no_path_of_this_machine(tmp_path):
    base_dir, repo = tiny_repo(tmp_path, "llava")
    text = (repo / "README.md").read_text(encoding="utf-8")
    assert str(tmp_path) not in text and str(base_dir) not in text
    assert "base_model" not in front_matter(text)  # a local base is not a Hub id
    code = snippet(text)
    assert "# Not pushed yet: put the repo id" in code
    assert '"your-namespace/pruned", trust_remote_code=True' in code
    assert 'AutoProcessor.from_pretrained("BASE-MODEL-ID")' in code


def check_against_library(arch: str, repo: Path, inputs, output, printed: str, budget: float) -> None:
    """The snippet's output equals pruned generation through the library (a second loading path) and pruning bit."""
    model = get_pruned_model(BUILDERS[arch](), repo)
    inputs = {name: value for name, value in inputs.items()}
    max_new_tokens = output.shape[1] - inputs["input_ids"].shape[1]
    assert max_new_tokens > 0
    expected = model.generate(
        **inputs, max_new_tokens=max_new_tokens, prune_budget=budget, return_dict_in_generate=True
    )
    assert torch.equal(output, expected.sequences)
    visual = inputs["input_ids"] == model.config.image_token_id
    kept, total = int(expected.keep_mask[visual].sum()), int(visual.sum())
    assert kept < total
    assert tokens_to_keep(budget, total) == kept
    unpruned = model.generate(**inputs, max_new_tokens=max_new_tokens, prune_budget=1.0)
    assert not torch.equal(unpruned, output)  # the snippet's answer is the pruned one, not the base model's
    decoded = tiny_processor(arch).batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert printed == decoded[0]


# Around the snippet in the fresh process: hf_tokenprune cannot be imported (a Hub user has only transformers), and
# afterwards the snippet's inputs and output are handed back to the test.
PROLOGUE = "import sys\nsys.modules['hf_tokenprune'] = None\n"
EPILOGUE = '\ntorch.save({"inputs": dict(inputs), "output": output}, DUMP)\n'


@pytest.mark.parametrize("arch", ["llava", "llava_next"])
def test_snippet_runs_offline_in_a_fresh_process(tmp_path, arch):
    """The pushed repo and its base, as a download leaves them in the Hub cache: the card's snippet runs as pasted."""
    base_dir, repo = tiny_repo(tmp_path, arch, base=BASE_ID, repo_id=REPO_ID)
    cache = tmp_path / "hub-cache"
    place_in_hf_cache(base_dir, BASE_ID, cache)
    place_in_hf_cache(repo, REPO_ID, cache)
    text = (repo / "README.md").read_text(encoding="utf-8")
    code = snippet(text)
    assert f'from_pretrained(\n    "{REPO_ID}", trust_remote_code=True' in code
    assert f'AutoProcessor.from_pretrained("{BASE_ID}")' in code
    assert str(tmp_path) not in text
    dump = tmp_path / "dump.pt"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", PROLOGUE + code + EPILOGUE.replace("DUMP", repr(str(dump)))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.endswith("\n")
    dumped = torch.load(dump)
    check_against_library(arch, repo, dumped["inputs"], dumped["output"], result.stdout[:-1], 0.25)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "internvl"])
def test_snippet_runs_in_process_with_the_tiny_processor(tmp_path, monkeypatch, arch):
    """An unpushed local save: the snippet runs once its placeholder is replaced by the folder, as its comment says."""
    base_dir, repo = tiny_repo(tmp_path, arch)
    code = snippet((repo / "README.md").read_text(encoding="utf-8")).replace('"your-namespace/pruned"', repr(str(repo)))
    processor_sources = []

    def from_pretrained(name, *args, **kwargs):
        processor_sources.append(name)
        return tiny_processor(arch)  # the stock processors of these two need torchvision

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", from_pretrained)
    printed, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), namespace)
    assert processor_sources == ["BASE-MODEL-ID"]  # the base is a local folder, which the card does not name
    assert printed.getvalue().endswith("\n")
    check_against_library(arch, repo, namespace["inputs"], namespace["output"], printed.getvalue()[:-1], 0.25)
