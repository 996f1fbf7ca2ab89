"""`training_recipe.json` in `TokenPruneTrainer` checkpoints: how the selector was trained, as flat JSON scalars.

Oracle: the values passed to `TokenPruneTrainingArguments` (and the args object for the ones left at their
defaults), and the trainer's own `state.global_step` at each save.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path

import torch
from PIL import Image
from transformers import TrainingArguments

from hf_tokenprune import (
    TokenPruneConfig,
    TokenPruneTrainer,
    TokenPruneTrainingArguments,
    get_pruned_model,
    load_conversation_records,
)
from hf_tokenprune.modeling.configuration_token_prune import CONFIG_NAME
from hf_tokenprune.testing import BUILDERS, tiny_processor

RECIPE_NAME = "training_recipe.json"

# What a reader needs to reproduce a run, beyond the recipe's own fields.
STOCK_KEYS = {
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "bf16",
    "fp16",
}
RECIPE_KEYS = {
    "train_budget",
    "lambda_start",
    "lambda_end",
    "tau_start",
    "tau_end",
    "tau_anneal_steps",
    "gumbel_temperature",
    "reg_p",
    "reg_q",
    "reg_alpha1",
    "reg_alpha2",
    "reconstructor_num_layers",
    "image_reconstruction",
}

# Every recipe field and most stock ones away from their defaults, so a default written by mistake shows.
CHOSEN = dict(
    train_budget=0.3,
    lambda_start=0.25,
    lambda_end=1.5,
    tau_start=1.5,
    tau_end=0.2,
    tau_anneal_steps=7,
    gumbel_temperature=0.7,
    reg_p=0.5,
    reg_q=0.2,
    reg_alpha1=0.3,
    reg_alpha2=0.4,
    reconstructor_num_layers=2,
    learning_rate=3e-3,
    lr_scheduler_type="cosine",
    warmup_steps=1,
    weight_decay=0.05,
    max_steps=3,
    per_device_train_batch_size=1,
    gradient_accumulation_steps=2,
    seed=3,
)


def write_records(folder, count=2):
    generator = torch.Generator().manual_seed(0)
    records = []
    for index in range(count):
        pixels = (torch.rand(16, 16, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"image{index}.png")
        records.append(
            {
                "image": f"image{index}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nwhat colour is the circle"},
                    {"from": "gpt", "value": "red"},
                ],
            }
        )
    path = folder / "train.json"
    path.write_text(json.dumps(records))
    return path


def test_checkpoints_carry_the_training_recipe_written_before_the_config(tmp_path, monkeypatch):
    args = TokenPruneTrainingArguments(
        output_dir=str(tmp_path / "out"),
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **CHOSEN,
    )
    model = get_pruned_model(BUILDERS["qwen2_5_vl"](), TokenPruneConfig(method="visionselector"))
    trainer = TokenPruneTrainer(
        model=model,
        args=args,
        train_dataset=load_conversation_records(write_records(tmp_path), image_folder=tmp_path),
        processing_class=tiny_processor("qwen2_5_vl"),
        image_folder=tmp_path,
    )

    # The config marks a checkpoint complete, so the recipe must already be in place, whole, when it is written.
    seen_at_config_time = []
    save_config = TokenPruneConfig.save_pretrained

    def checked_save(self, directory):
        directory_files = {path.name for path in Path(directory).iterdir()}
        has_temporary = any(name.endswith(".tmp") for name in directory_files)
        seen_at_config_time.append((Path(directory).name, RECIPE_NAME in directory_files, has_temporary))
        return save_config(self, directory)

    monkeypatch.setattr(TokenPruneConfig, "save_pretrained", checked_save)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    # The Trainer checkpoints at step 2 and at the last step; then the final save_model.
    assert seen_at_config_time == [("checkpoint-2", True, False), ("checkpoint-3", True, False), ("final", True, False)]

    stock_fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    added_fields = {field.name for field in dataclasses.fields(TokenPruneTrainingArguments)} - stock_fields
    assert RECIPE_KEYS <= added_fields
    checkpoints = tmp_path / "out"
    for directory, step in (
        (checkpoints / "checkpoint-2", 2),
        (checkpoints / "checkpoint-3", 3),
        (tmp_path / "final", 3),
    ):
        assert (directory / CONFIG_NAME).is_file()
        recipe = json.loads((directory / RECIPE_NAME).read_text())
        keys = set(recipe)
        assert keys >= STOCK_KEYS | RECIPE_KEYS | added_fields | {"method", "world_size", "global_step"}
        # Anything else is a stock field or a count derived from them; no nesting anywhere.
        assert keys - STOCK_KEYS - added_fields <= stock_fields | {
            "method",
            "world_size",
            "global_step",
            "total_train_batch_size",
        }
        for name, value in recipe.items():
            assert value is None or isinstance(value, (bool, int, float, str)), (name, value)

        assert recipe["method"] == "visionselector"
        assert recipe["global_step"] == step
        assert recipe["world_size"] == args.world_size == 1
        assert recipe["total_train_batch_size"] == 1 * 2 * 1
        for name, value in CHOSEN.items():
            assert recipe[name] == value, name
        for name in keys - {"method", "world_size", "global_step", "total_train_batch_size"}:
            expected = getattr(args, name)
            expected = expected.value if isinstance(expected, enum.Enum) else expected
            assert recipe[name] == expected, name
    assert trainer.state.global_step == 3
    assert not any(path.name.endswith(".tmp") for path in (tmp_path / "out" / "checkpoint-2").iterdir())
