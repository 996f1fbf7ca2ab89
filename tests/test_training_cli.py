"""`hf-tokenprune train --config recipe.yaml`, in process and under `accelerate launch` with two CPU processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from test_training import write_records

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.cli import main
from hf_tokenprune.testing import BUILDERS


def write_recipe(tmp_path, output, arch="qwen2_5_vl", **overrides):
    recipe = {
        "model_name_or_path": f"tiny:{arch}",
        "method": "visionselector",
        "budget": 0.25,
        "train_file": str(write_records(tmp_path)),
        "image_folder": str(tmp_path),
        "output_dir": str(output),
        "max_steps": 2,
        "per_device_train_batch_size": 1,
        "learning_rate": 0.01,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "lambda_end": 3.0,
    }
    recipe.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def check_checkpoint(directory, budget=0.25, arch="qwen2_5_vl"):
    """Only the selector and its config; it loads onto a fresh base and prunes."""
    assert {p.name for p in directory.iterdir()} >= {"token_prune_config.json", "token_selector.safetensors"}
    config = TokenPruneConfig.from_pretrained(directory)
    assert (config.method, config.budget, config.base_model_name_or_path) == (
        "visionselector",
        budget,
        f"tiny:{arch}",
    )
    base = BUILDERS[arch]()
    tensors = safetensors.torch.load_file(directory / "token_selector.safetensors")
    assert set(tensors) == {"query_proj.weight", "key_proj.weight"}
    assert sum(t.numel() for t in tensors.values()) < sum(p.numel() for p in base.parameters())
    model = get_pruned_model(base, directory)
    for name, tensor in model.token_selector.state_dict().items():
        assert torch.equal(tensor, tensors[name])
    return tensors


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava_onevision", "gemma3"])
def test_train_command_with_yaml_recipe_and_overrides(tmp_path, capsys, arch):
    output = tmp_path / "run"
    recipe = write_recipe(tmp_path, output, arch)
    assert main(["train", "--config", str(recipe), "--max_steps", "3"]) == 0
    tensors = check_checkpoint(output, arch=arch)
    init = get_pruned_model(BUILDERS[arch](), TokenPruneConfig(method="visionselector")).token_selector
    assert not torch.equal(tensors["query_proj.weight"], init.query_proj.weight)
    assert "selector saved to" in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "divprune"}, "`method` must be a learned selector"),
        ({"train_file": "nowhere.json"}, "nowhere.json"),
        ({"model_name_or_path": "tiny:resnet"}, "tiny architectures"),
        ({"train_budget": 2.0}, "train_budget"),
    ],
)
def test_train_command_rejects_bad_recipes_by_name(tmp_path, overrides, message):
    output = tmp_path / "run"
    recipe = write_recipe(tmp_path, output, **overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        main(["train", "--config", str(recipe)])
    assert not output.exists()


def test_unknown_yaml_field_is_named(tmp_path):
    recipe = write_recipe(tmp_path, tmp_path / "run", lamda_end=1.0)
    with pytest.raises(SystemExit, match="lamda_end"):
        main(["train", "--config", str(recipe)])


@pytest.mark.parametrize("method", ["visionselector", "autoselect"])
def test_the_seed_fixes_the_trained_selector_whatever_the_process_drew_before(tmp_path, method):
    """Oracle: the same recipe trained twice in one process, with other random draws in between, writes the same
    weights; another `seed` writes other weights. The scorer is initialised when it is attached to the base, before
    the Trainer seeds: before the fix it started from whatever state the global generator was in."""
    from hf_tokenprune.testing import tiny_processor

    base = tmp_path / "base"  # from disk, as a user's model loads (the tiny builders seed the generator themselves)
    BUILDERS["qwen2_5_vl"]().save_pretrained(base)
    tiny_processor("qwen2_5_vl").save_pretrained(base)
    trained = {}
    for name, seed, draws in (("first", 0, 1), ("again", 0, 1000), ("other", 1, 1)):
        torch.randn(draws)  # the process's generator in another state each time
        output = tmp_path / name
        recipe = write_recipe(tmp_path, output, method=method, seed=seed, max_steps=2, model_name_or_path=str(base))
        assert main(["train", "--config", str(recipe)]) == 0
        trained[name] = safetensors.torch.load_file(output / "token_selector.safetensors")
    assert all(torch.equal(trained["first"][key], trained["again"][key]) for key in trained["first"])
    assert any(not torch.equal(trained["first"][key], trained["other"][key]) for key in trained["first"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# accelerate 1.15 runs `--cpu --num_processes 2` as ONE process (its simple launcher; several CPU processes need
# mpirun). `--multi_gpu` on a machine without GPUs starts two torchrun processes that train with DDP over gloo.
@pytest.mark.parametrize("launcher, processes", [(["--cpu"], 1), (["--multi_gpu"], 2)])
def test_accelerate_launch_writes_the_same_checkpoint_as_one_process(tmp_path, launcher, processes):
    output = tmp_path / "launched"
    recipe = write_recipe(tmp_path, output, max_steps=2, save_strategy="steps", save_steps=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "hf_tokenprune.cli", "train", "--config", str(recipe),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())
    # 4 records, batch 1 per process: an optimizer step consumes `processes` records, i.e. processes / 4 epochs.
    assert state["global_step"] == 2
    assert state["log_history"][0]["epoch"] == pytest.approx(processes / 4)
    launched = check_checkpoint(output)

    single_output = tmp_path / "single"
    main(["train", "--config", str(write_recipe(tmp_path, single_output, max_steps=2))])
    single = check_checkpoint(single_output)
    assert {k: v.shape for k, v in launched.items()} == {k: v.shape for k, v in single.items()}
    assert {p.name for p in output.iterdir() if p.is_file()} == {p.name for p in single_output.iterdir() if p.is_file()}


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml")))
def test_shipped_recipes_parse(recipe):
    """Every field of the example recipes exists and passes validation (no model is loaded)."""
    from hf_tokenprune.cli import parse_arguments
    from hf_tokenprune.training.entry import TRAIN_ARGUMENTS

    model_args, data_args, training_args = parse_arguments(
        TRAIN_ARGUMENTS, ["--config", str(recipe), "--bf16", "false"], "t"
    )
    values = yaml.safe_load(recipe.read_text())
    assert model_args.method == values["method"] and data_args.train_file == values["train_file"]
    assert training_args.learning_rate == values["learning_rate"]
