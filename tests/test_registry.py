"""Third-party methods registered from outside the package: a config class, a selector and (learned) a recipe.

Everything a method needs is declared in this file, the way a plugin package would, and runs through `generate`
with a budget and one `TokenPruneTrainer` step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from test_training import write_records
from torch import nn

from hf_tokenprune import TokenPruneConfig, get_pruned_model, load_conversation_records
from hf_tokenprune.modeling import token_selectors
from hf_tokenprune.modeling.configuration_token_prune import check_int
from hf_tokenprune.modeling.selector_random import RandomConfig, RandomSelector
from hf_tokenprune.modeling.token_selectors import (
    TokenSelector,
    learned_selectors,
    register_selector,
    registered_config_class,
    training_free_selectors,
)
from hf_tokenprune.testing import tiny_processor, tiny_qwen2_5_vl, tiny_qwen2_5_vl_inputs
from hf_tokenprune.training import (
    Recipe,
    RecipeArguments,
    TokenPruneTrainer,
    TokenPruneTrainingArguments,
    register_recipe,
    training_arguments_class,
)
from hf_tokenprune.training import recipe as recipe_registry
from hf_tokenprune.training.methods import VisionSelectorArguments, VisionSelectorRecipe

BUDGET = 0.25


@dataclass
class EdgeTokensConfig(TokenPruneConfig):
    """Training-free: keep the first or the last tokens of each image."""

    method: str = field(default="edge_tokens", metadata={"help": "Registered selector name."})
    from_end: bool = field(default=True, metadata={"help": "Keep the last tokens instead of the first."})


class EdgeTokensSelector(TokenSelector):
    calls: list[tuple[int, int, list[int]]] = []

    def select(self, features, num_keep, grid_hw=None, generator=None):
        num_tokens = features.shape[0]
        start = num_tokens - num_keep if self.config.from_end else 0
        keep_indices = torch.arange(start, start + num_keep, device=features.device)
        EdgeTokensSelector.calls.append((num_tokens, num_keep, keep_indices.tolist()))
        return keep_indices


@dataclass
class LinearScorerConfig(TokenPruneConfig):
    """Learned: one linear map from each token to its score."""

    method: str = field(default="linear_scorer", metadata={"help": "Registered selector name."})
    init_scale: int = field(default=1, metadata={"help": "Multiplier of the default init (>= 1)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.init_scale, "init_scale", 1)


class LinearScorer(TokenSelector):
    trainable = True
    papers = ("A paper of our own",)

    def __init__(self, config: LinearScorerConfig, input_dim: int, llm_hidden_size: int) -> None:
        super().__init__(config, input_dim, llm_hidden_size)
        self.linear = nn.Linear(input_dim, 1)
        with torch.no_grad():
            self.linear.weight.mul_(config.init_scale)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.to(self.linear.weight.dtype)).squeeze(-1)


@dataclass
class LinearScorerArguments(RecipeArguments):
    mass_weight: float = field(default=0.5, metadata={"help": "linear_scorer: weight of the mean-mask penalty (>= 0)."})

    def __post_init__(self) -> None:
        if not self.mass_weight >= 0:
            raise ValueError(f"`mass_weight` must be >= 0, got {self.mass_weight!r}")
        super().__post_init__()


class LinearScorerRecipe(Recipe):
    """Sigmoid mask times the projector output; CE + mass_weight * mean(mask)."""

    def segment_embeds(self, model, segment, num_keep, metrics):
        mask = torch.sigmoid(model.token_selector.score(segment.embeds)).to(segment.embeds.dtype)
        metrics.add("mask_mass", mask.detach().mean())
        return mask[:, None] * segment.embeds, self.args.mass_weight * mask.mean()


@pytest.fixture
def third_party_methods(monkeypatch):
    """Register both methods in copies of the registries, so nothing leaks into other tests."""
    monkeypatch.setattr(token_selectors, "_SELECTORS", dict(token_selectors._SELECTORS))
    monkeypatch.setattr(recipe_registry, "_RECIPES", dict(recipe_registry._RECIPES))
    for name in ("edge_tokens", "linear_scorer"):  # register_selector fills the config dispatch table too: undo it
        monkeypatch.setitem(token_selectors.METHOD_CONFIG_CLASSES, name, None)
    register_selector("edge_tokens", EdgeTokensConfig, EdgeTokensSelector)
    register_selector("linear_scorer", LinearScorerConfig, LinearScorer)
    register_recipe("linear_scorer", LinearScorerArguments, LinearScorerRecipe)
    EdgeTokensSelector.calls.clear()


def test_registered_methods_join_the_derived_lists(third_party_methods):
    assert "edge_tokens" in training_free_selectors() and "edge_tokens" not in learned_selectors()
    assert "linear_scorer" in learned_selectors()
    assert "mass_weight" in {f.name for f in training_arguments_class().__dataclass_fields__.values()}


def test_config_dispatches_on_method_and_validates_the_methods_fields(third_party_methods, tmp_path):
    config = TokenPruneConfig(method="linear_scorer", init_scale=3, budget=0.5)
    assert type(config) is LinearScorerConfig and config.init_scale == 3
    config.save_pretrained(tmp_path)
    assert TokenPruneConfig.from_pretrained(tmp_path) == config
    with pytest.raises(ValueError, match="init_scale"):
        TokenPruneConfig(method="linear_scorer", init_scale=0)
    with pytest.raises(TypeError, match="from_end"):
        TokenPruneConfig(method="linear_scorer", from_end=False)


@pytest.mark.parametrize("from_end", [True, False])
def test_third_party_training_free_method_generates_with_a_budget(third_party_methods, from_end):
    base = tiny_qwen2_5_vl()
    inputs = tiny_qwen2_5_vl_inputs()
    model = get_pruned_model(base, TokenPruneConfig(method="edge_tokens", from_end=from_end))
    out = model.generate(**inputs, prune_budget=BUDGET, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    (num_tokens, num_keep, keep_indices) = EdgeTokensSelector.calls[0]
    assert num_keep == max(1, round(BUDGET * num_tokens))
    expected_start = num_tokens - num_keep if from_end else 0
    assert keep_indices == list(range(expected_start, expected_start + num_keep))
    unpruned = model.generate(**inputs, prune_budget=1.0, max_new_tokens=3, do_sample=False)
    assert torch.equal(unpruned, base.generate(**inputs, max_new_tokens=3, do_sample=False))


def test_third_party_learned_method_generates_and_trains_one_step(third_party_methods, tmp_path):
    model = get_pruned_model(tiny_qwen2_5_vl(), TokenPruneConfig(method="linear_scorer", init_scale=2))
    assert isinstance(model.token_selector, LinearScorer)
    inputs = tiny_qwen2_5_vl_inputs()
    out = model.generate(**inputs, prune_budget=BUDGET, max_new_tokens=2, do_sample=False)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])

    selector_before = {k: v.clone() for k, v in model.token_selector.state_dict().items()}
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("token_selector.")}
    common = dict(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-1,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    records = load_conversation_records(write_records(tmp_path), image_folder=tmp_path)
    with pytest.raises(TypeError, match="LinearScorerArguments"):
        TokenPruneTrainer(model=model, args=TokenPruneTrainingArguments(**common), train_dataset=records,
                          processing_class=tiny_processor("qwen2_5_vl"), image_folder=tmp_path)  # fmt: skip
    args = training_arguments_class()(mass_weight=0.25, **common)
    trainer = TokenPruneTrainer(
        model=model,
        args=args,
        train_dataset=records,
        processing_class=tiny_processor("qwen2_5_vl"),
        image_folder=tmp_path,
    )
    trainer.train()
    assert trainer.model.recipe.args.mass_weight == 0.25
    assert "mask_mass" in trainer.state.log_history[0]
    after = model.token_selector.state_dict()
    assert any(not torch.equal(selector_before[k], after[k]) for k in selector_before)
    frozen_after = {k: v for k, v in model.state_dict().items() if not k.startswith("token_selector.")}
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)


def test_duplicate_names_raise(third_party_methods):
    with pytest.raises(ValueError, match="'edge_tokens' is already registered"):
        register_selector("edge_tokens", RandomConfig, RandomSelector)
    with pytest.raises(ValueError, match="'visionselector' is already registered"):
        register_recipe("visionselector", VisionSelectorArguments, VisionSelectorRecipe)
    with pytest.raises(ValueError, match="learned selector"):
        register_recipe("not_a_selector", LinearScorerArguments, LinearScorerRecipe)


LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


@pytest.mark.parametrize("method", ["visionselector", "autoselect", "reconstruction"])
def test_flat_configs_written_before_the_method_sections_load_unchanged(tmp_path, method):
    """Oracle: a `token_prune_config.json` as the earlier flat layout wrote it (every method's fields in one object,
    the files once committed with the bundled model) reads into the method's config with the values it holds, and
    a save of that config reads back equal."""
    legacy = json.loads((LEGACY / f"{method}.token_prune_config.json").read_text())
    config = TokenPruneConfig.from_json_file(LEGACY / f"{method}.token_prune_config.json")
    assert type(config) is registered_config_class(method)
    assert config.method == method
    for name, value in legacy.items():
        if hasattr(config, name):
            assert getattr(config, name) == value, name
    config.save_pretrained(tmp_path)
    assert TokenPruneConfig.from_pretrained(tmp_path) == config
