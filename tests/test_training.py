"""Training of the three learned selectors with `TokenPruneTrainer` on tiny models, through the real data path.

Oracles: the frozen base model's own parameters and outputs, the schedule formulas of the papers written out
here independently of the library, and a second (reloaded or uninterrupted) run.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from hf_tokenprune import (
    TokenPruneConfig,
    TokenPruneTrainer,
    TokenPruneTrainingArguments,
    get_pruned_model,
    load_conversation_records,
)
from hf_tokenprune.testing import BUILDERS, tiny_processor
from hf_tokenprune.training.training_model import TokenPruneTrainingModel

ARCHS = ["qwen2_5_vl", "qwen3_vl", "llava", "internvl", "smolvlm", "llava_onevision", "gemma3"]
METHODS = ["visionselector", "autoselect", "reconstruction", "questionselector"]
QUESTIONS = ["what colour is the circle", "how many star", "is the square red", "which shape is left"]
ANSWERS = ["red", "two", "yes no", "the circle"]


def write_records(folder, count=4, sizes=((16, 16), (24, 20), (20, 28), (32, 32))):
    """`count` single-image records with random-noise PNGs of the given sizes, as a JSON file; returns its path."""
    generator = torch.Generator().manual_seed(0)
    records = []
    for index in range(count):
        height, width = sizes[index % len(sizes)]
        pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"image{index}.png")
        records.append(
            {
                "image": f"image{index}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\n{QUESTIONS[index % 4]}"},
                    {"from": "gpt", "value": ANSWERS[index % 4]},
                ],
            }
        )
    path = folder / "train.json"
    path.write_text(json.dumps(records))
    return path


def training_args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    values.update(overrides)
    return TokenPruneTrainingArguments(**values)


def make_trainer(arch, method, tmp_path, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = BUILDERS[arch]()
    model = get_pruned_model(base, TokenPruneConfig(method=method))
    records = load_conversation_records(write_records(tmp_path), image_folder=tmp_path)
    trainer = TokenPruneTrainer(
        model=model,
        args=training_args(tmp_path / "out", **overrides),
        train_dataset=records,
        processing_class=tiny_processor(arch),
        image_folder=tmp_path,
    )
    return base, model, trainer


def expected_schedule(method, step, max_steps, args):
    """The papers' schedules, written out here: paper 000 Eq. 12 (linear lambda), paper 002 A (cosine tau, then held)."""
    if method in ("visionselector", "questionselector"):  # questionselector trains with visionselector's recipe
        total = max(1, round(args.lambda_anneal_fraction * max_steps))
        return "lambda_t", args.lambda_start + (args.lambda_end - args.lambda_start) * min(step / total, 1.0)
    if method == "autoselect":
        total = args.tau_anneal_steps or max(1, round(args.tau_anneal_fraction * max_steps))
        progress = min(step / total, 1.0)
        return "temperature", args.tau_end + (args.tau_start - args.tau_end) * (1 + math.cos(math.pi * progress)) / 2
    return "gumbel_temperature", args.gumbel_temperature


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_training_changes_exactly_the_trainable_tensors_and_reloads(arch, method, tmp_path):
    base, model, trainer = make_trainer(arch, method, tmp_path, max_steps=3, save_strategy="steps", save_steps=3)
    frozen_before = {name: p.detach().clone() for name, p in base.named_parameters()}
    trainable = dict(trainer.model.named_parameters())
    trainable = {name: p for name, p in trainable.items() if p.requires_grad}
    trainable_before = {name: p.detach().clone() for name, p in trainable.items()}
    assert {id(p) for p in model.token_selector.parameters()} <= {id(p) for p in trainable.values()}

    trainer.train()

    # The optimizer holds exactly the trainable tensors: no state for the frozen VLM.
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainable.values()}
    for name, before in frozen_before.items():
        assert torch.equal(before, dict(base.named_parameters())[name]), f"frozen {name} changed"
    for name, parameter in trainable.items():
        assert not torch.equal(trainable_before[name], parameter.detach()), f"trainable {name} did not change"

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert math.isfinite(entry["loss"])
        name, value = expected_schedule(method, entry["step"] - 1, 3, trainer.args)
        assert entry[name] == pytest.approx(value, rel=1e-6, abs=1e-9)
        assert 0.0 <= entry["mask_polarization"] <= 1.0
    terms = {
        "visionselector": ("task_loss", "constraint_loss"),
        "questionselector": ("task_loss", "constraint_loss"),
        "autoselect": ("task_loss",),
    }
    for term in terms.get(method, ("reconstruction_loss", "regularizer")):
        assert all(math.isfinite(entry[term]) for entry in logs)

    # The checkpoint holds only the trainable tensors and the config, and reloads onto a fresh base model.
    checkpoint = tmp_path / "out" / "checkpoint-3"
    assert (checkpoint / "token_prune_config.json").is_file()
    reloaded = get_pruned_model(BUILDERS[arch](), checkpoint)
    for (name, trained), (_, loaded) in zip(
        model.token_selector.state_dict().items(), reloaded.token_selector.state_dict().items(), strict=True
    ):
        assert torch.allclose(trained, loaded), name
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    inputs.pop("labels")
    expected = model.generate(**inputs, prune_budget=0.5, max_new_tokens=3, return_dict_in_generate=True)
    actual = reloaded.generate(**inputs, prune_budget=0.5, max_new_tokens=3, return_dict_in_generate=True)
    assert torch.equal(expected.sequences, actual.sequences)
    assert torch.equal(expected.keep_mask, actual.keep_mask)


def test_resume_continues_schedules_and_matches_an_uninterrupted_run(tmp_path):
    """autoselect has a schedule (tau) and a train-only module (the denoiser): both must resume exactly."""
    _, straight, trainer = make_trainer("qwen2_5_vl", "autoselect", tmp_path / "a", max_steps=4)
    trainer.train()
    _, _, first = make_trainer(
        "qwen2_5_vl", "autoselect", tmp_path / "b", max_steps=4, save_strategy="steps", save_steps=2
    )
    first.train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-2"
    assert {p.name for p in checkpoint.iterdir()} >= {
        "token_prune_config.json",
        "token_selector.safetensors",
        "training_modules.safetensors",
        "trainer_state.json",
        "optimizer.pt",
    }
    assert not any(p.name.endswith(".tmp") for p in checkpoint.iterdir())
    _, resumed, second = make_trainer("qwen2_5_vl", "autoselect", tmp_path / "b", max_steps=4)
    second.train(resume_from_checkpoint=str(checkpoint))
    resumed_logs = [entry for entry in second.state.log_history if "loss" in entry and entry["step"] > 2]
    assert [entry["step"] for entry in resumed_logs] == [3, 4]
    for entry in resumed_logs:
        _, value = expected_schedule("autoselect", entry["step"] - 1, 4, second.args)
        assert entry["temperature"] == pytest.approx(value, rel=1e-6)
    for (name, expected), (_, actual) in zip(
        trainer.model.trainable_state_dict().items(), second.model.trainable_state_dict().items(), strict=True
    ):
        assert torch.allclose(expected, actual, atol=1e-6), name


@pytest.mark.parametrize("method", ["visionselector", "autoselect"])
def test_activation_checkpointing_through_the_frozen_language_model(method, tmp_path):
    """Same loss and selector gradients with the frozen LLM's layers checkpointed; and the Trainer flag works."""
    base, model, trainer = make_trainer("qwen2_5_vl", method, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    wrapper = trainer.model.train()

    def loss_and_grads():
        torch.manual_seed(0)  # the VP noise of autoselect
        wrapper.zero_grad()
        loss = wrapper(**batch)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.token_selector.parameters()]

    calls = []
    language_model = model.model.language_model
    language_model.layers[0].input_layernorm.register_forward_hook(lambda *args: calls.append(1))
    plain_loss, plain_grads = loss_and_grads()
    assert len(calls) == 1
    wrapper.activation_checkpointing_enable()
    assert language_model.gradient_checkpointing
    calls.clear()
    ckpt_loss, ckpt_grads = loss_and_grads()
    assert len(calls) == 2  # a checkpointed layer runs again in the backward
    assert torch.allclose(plain_loss, ckpt_loss, atol=1e-6)
    for plain, ckpt in zip(plain_grads, ckpt_grads, strict=True):
        assert torch.allclose(plain, ckpt, atol=1e-6, rtol=1e-4)

    _, _, flagged = make_trainer("qwen2_5_vl", method, tmp_path / "flag", activation_checkpointing=True, max_steps=1)
    flagged.train()
    assert flagged.model.model.model.language_model.gradient_checkpointing
    assert math.isfinite(flagged.state.log_history[0]["loss"])


def test_training_model_rejects_untrainable_setups():
    base = BUILDERS["llava"]()
    args = training_args("unused")
    with pytest.raises(TypeError, match="pruned model"):
        TokenPruneTrainingModel(base, args)
    with pytest.raises(ValueError, match="divprune"):
        TokenPruneTrainingModel(get_pruned_model(base, TokenPruneConfig(method="divprune")), args)


def test_schedules_anneal_over_their_steps_and_then_hold():
    """Issue 15, defect 4: tau reaches tau_end after half the run by default (paper 002 A: 2,000 of ~4,000
    steps) or after `tau_anneal_steps`, and stays there; lambda's ramp can end early the same way."""
    from hf_tokenprune.training.callbacks import recipe_callbacks
    from hf_tokenprune.training.methods import AutoSelectRecipe, VisionSelectorRecipe

    model = get_pruned_model(BUILDERS["llava"](), TokenPruneConfig(method="autoselect"))
    for overrides, annealed_at in (({}, 50), ({"tau_anneal_steps": 20}, 20)):
        args = training_args("unused", max_steps=100, **overrides)
        (callback,) = recipe_callbacks(AutoSelectRecipe(model, args), args)
        assert callback.value(annealed_at - 1, 100) > args.tau_end
        for step in (annealed_at, annealed_at + 1, 99, 100):
            assert callback.value(step, 100) == pytest.approx(args.tau_end)
    args = training_args("unused", max_steps=100, lambda_anneal_fraction=0.8)
    vs_model = get_pruned_model(BUILDERS["llava"](), TokenPruneConfig(method="visionselector"))
    (callback,) = recipe_callbacks(VisionSelectorRecipe(vs_model, args), args)
    assert callback.value(40, 100) == pytest.approx(0.1 + 1.9 * 0.5)
    assert callback.value(80, 100) == callback.value(99, 100) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("train_budget", 0.0),
        ("train_budget", 1.5),
        ("tau_end", 0.0),
        ("reg_p", 1.5),
        ("lambda_end", -1.0),
        ("tau_anneal_fraction", 0.0),
        ("lambda_anneal_fraction", 1.5),
    ],
)
def test_bad_recipe_arguments_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        training_args("unused", **{field: value})


# ---------------------------------------------------------------------------------------------------- recipe math
@pytest.mark.parametrize("arch", ARCHS)
def test_project_features_reproduces_the_stock_projector_output(arch):
    """autoselect trains through `project_features`: on unaltered features it must give the stock visual tokens."""
    from hf_tokenprune.testing import IMAGE_SIZES, build_inputs, make_samples

    model = get_pruned_model(BUILDERS[arch](), TokenPruneConfig(method="autoselect"))
    inputs = build_inputs(arch, make_samples([1, 2], IMAGE_SIZES[arch][:2] * 2))
    vision_inputs, _ = model.split_vision_inputs(inputs)
    placed = model.place_visual_segments(inputs["input_ids"], vision_inputs, need_features=True)
    assert placed
    for segment, _, _ in placed:
        projected = model.prune_hooks.project_features(model, segment.features)
        assert torch.allclose(projected, segment.embeds, atol=1e-5, rtol=1e-5)


def test_autoselect_trains_on_llava_next(tmp_path):
    """Issue 15, defect 6: project_features keeps the row-newline tokens' `image_newline` embedding, so the
    autoselect recipe trains on LLaVA-NeXT (paper 004 reports it) and its selector's weights move."""
    from hf_tokenprune.testing import IMAGE_SIZES, build_inputs, make_samples

    model = get_pruned_model(BUILDERS["llava_next"](), TokenPruneConfig(method="autoselect"))
    inputs = build_inputs("llava_next", make_samples([1, 2], IMAGE_SIZES["llava_next"][:2] * 2))
    vision_inputs, _ = model.split_vision_inputs(inputs)
    placed = model.place_visual_segments(inputs["input_ids"], vision_inputs, need_features=True)
    for segment, _, _ in placed:
        newline = (segment.features == 0).all(-1)
        assert newline.any()
        projected = model.prune_hooks.project_features(model, segment.features)
        assert torch.allclose(projected, segment.embeds, atol=1e-5, rtol=1e-5)
    records = load_conversation_records(write_records(tmp_path), image_folder=tmp_path)
    trainer = TokenPruneTrainer(
        model=model,
        args=training_args(tmp_path / "out", max_steps=2),
        train_dataset=records,
        processing_class=tiny_processor("llava_next"),
        image_folder=tmp_path,
    )
    before = {name: p.detach().clone() for name, p in model.token_selector.named_parameters()}
    trainer.train()
    assert any(not torch.equal(p, before[name]) for name, p in model.token_selector.named_parameters())


@pytest.mark.parametrize("method", ["visionselector", "autoselect"])
@pytest.mark.parametrize("arch", ARCHS)
def test_keeping_everything_gives_the_frozen_base_models_loss(arch, method, tmp_path, monkeypatch):
    """train_budget=1.0: mask 1 (visionselector) / alpha 1 and an identity denoiser (autoselect) -> stock CE loss."""
    import hf_tokenprune.training.methods.autoselect as recipes

    monkeypatch.setattr(recipes, "VP_EPS", 0.0)  # alpha = 1 exactly: no noise at all
    base, model, trainer = make_trainer(arch, method, tmp_path, train_budget=1.0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    with torch.no_grad():
        outputs = trainer.model(**batch)
        expected = base(**batch).loss
    assert torch.allclose(outputs["loss"], expected, atol=1e-5)


def test_visionselector_loss_is_task_loss_plus_lambda_times_bce(tmp_path):
    from hf_tokenprune.training.relaxations import differentiable_topk

    _, model, trainer = make_trainer("llava", "visionselector", tmp_path, train_budget=0.25)
    with torch.no_grad():
        for parameter in model.token_selector.parameters():
            parameter.normal_(0, 0.5)  # spread the scores so the soft mask is far from uniform
    recipe = trainer.model.recipe
    recipe.lambda_t = 1.7
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        outputs = trainer.model(**batch)
    # Independent BCE over each image's 16 tokens, k = 4: -mean(h log m + (1 - h) log(1 - m)).
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    placed = model.place_visual_segments(inputs["input_ids"], model.split_vision_inputs(inputs)[0], False)
    expected_bce = 0.0
    for segment, _, _ in placed:
        scores = model.token_selector.score(segment.embeds)
        soft = differentiable_topk(scores, 4)
        hard = torch.zeros(16)
        hard[scores.topk(4).indices] = 1.0
        expected_bce += -(hard * soft.log() + (1 - hard) * (1 - soft).log()).mean() / len(placed)
    assert outputs["loss"].item() == pytest.approx(
        outputs["metrics"]["task_loss"] + 1.7 * expected_bce.item(), rel=1e-5
    )


def test_vp_noise_preserves_variance_and_interpolates():
    from hf_tokenprune.training.methods.autoselect import vp_noise

    torch.manual_seed(0)
    features = 3.0 * torch.randn(4000, 64)
    for value in (0.0, 0.3, 0.5, 0.9):
        throttled = vp_noise(features, torch.full((4000,), value))
        assert throttled.var().item() == pytest.approx(features.var().item(), rel=0.03)
        # The share of the original signal: corr(x~, x) = sqrt(alpha).
        correlation = torch.corrcoef(torch.stack([throttled.flatten(), features.flatten()]))[0, 1].item()
        assert correlation == pytest.approx(value**0.5, abs=0.02)


def test_denoiser_attention_is_diagonal():
    """Token i's output does not depend on any other token (identity attention mask, paper 002 Sec. 4.4)."""
    from hf_tokenprune.training.methods.autoselect import DiagonalDenoiser

    torch.manual_seed(0)
    denoiser = DiagonalDenoiser(input_dim=12, hidden_size=8, num_heads=2)
    torch.nn.init.normal_(denoiser.output_proj.weight)  # not the identity start, so the block matters
    features = torch.randn(6, 12)
    changed = features.clone()
    changed[3] += 5.0
    before, after = denoiser(features), denoiser(changed)
    assert torch.allclose(before[[0, 1, 2, 4, 5]], after[[0, 1, 2, 4, 5]], atol=1e-6)
    assert not torch.allclose(before[3], after[3])


def test_clipped_regularizer_values_and_gradients():
    """Paper 001 Eq. 8 with p = 0.6, q = 0.1, a1 = a2 = 0.1: gradient +a1 above p, 0 between, -a2 below q."""
    from hf_tokenprune.training.methods.reconstruction import clipped_regularizer

    for keep, value, gradient in (
        (0.05, 0.1 * 0.6 - 0.1 * 0.05, -0.1),
        (0.3, 0.1 * 0.6 - 0.1 * 0.1, 0.0),
        (0.8, 0.1 * 0.8 - 0.1 * 0.1, 0.1),
    ):
        fraction = torch.tensor(keep, requires_grad=True)
        result = clipped_regularizer(fraction, 0.6, 0.1, 0.1, 0.1)
        result.backward()
        assert result.item() == pytest.approx(value)
        assert fraction.grad.item() == pytest.approx(gradient)


def test_reconstruction_keep_rate_follows_train_budget_per_image():
    """Issue 15, defect 2: p = train_budget, q = p / 6 (the paper's 0.6 / 0.1 ratio), Eq. 8 applied per image.

    At train_budget 0.1 an image keeping 50% is pushed down and one keeping 1% up, although their batch mean
    (0.255) lies inside the paper's flat [0.1, 0.6], where the old batch-mean term had no gradient at all.
    """
    from hf_tokenprune.training.methods.reconstruction import clipped_regularizer, keep_rate_bounds

    args = training_args("unused", train_budget=0.1)
    p, q = keep_rate_bounds(args)
    assert (p, q) == pytest.approx((0.1, 0.1 / 6))
    assert keep_rate_bounds(training_args("unused", train_budget=0.1, reg_p=0.6, reg_q=0.1)) == (0.6, 0.1)
    fractions = torch.tensor([0.5, 0.01], requires_grad=True)
    value = clipped_regularizer(fractions, p, q, args.reg_alpha1, args.reg_alpha2)
    value.backward()
    assert value.item() == pytest.approx((0.1 * 0.5 - 0.1 * q + 0.1 * 0.1 - 0.1 * 0.01) / 2)
    assert fractions.grad.tolist() == pytest.approx([0.1 / 2, -0.1 / 2])

    # Through the recipe: its logged regulariser uses these bounds (p = 0.6 would give a1 * 0.6 - a2 * 0.1 = 0.05).
    base = BUILDERS["qwen2_5_vl"]()
    model = get_pruned_model(base, TokenPruneConfig(method="reconstruction"))
    with torch.no_grad():
        model.token_selector.head.bias.copy_(torch.tensor([-10.0, 10.0]))  # keep every token: L = 1
    from hf_tokenprune.testing import build_inputs, make_samples

    inputs = build_inputs("qwen2_5_vl", make_samples([1, 1], [(8, 8), (16, 8)]))
    metrics = TokenPruneTrainingModel(model, args)(**inputs)["metrics"]
    assert metrics["regularizer"] == pytest.approx(0.1 * 1.0 - 0.1 * q, rel=1e-5)


def test_loading_a_bad_selector_file_names_it_and_leaves_the_model_unchanged(tmp_path):
    import safetensors.torch

    _, model, trainer = make_trainer("llava", "visionselector", tmp_path, max_steps=1)
    trainer.save_model(str(tmp_path / "ckpt"))
    weights = tmp_path / "ckpt" / "token_selector.safetensors"
    fresh = get_pruned_model(BUILDERS["llava"](), TokenPruneConfig(method="visionselector"))
    before = {k: v.clone() for k, v in fresh.token_selector.state_dict().items()}
    from hf_tokenprune.model import load_selector_weights

    tensors = safetensors.torch.load_file(weights)
    tensors["key_proj.weight"] = tensors["key_proj.weight"][:, :3].contiguous()
    safetensors.torch.save_file(tensors, weights)
    with pytest.raises(ValueError, match="key_proj.weight.*shape"):
        load_selector_weights(fresh, tmp_path / "ckpt")
    weights.write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="token_selector.safetensors"):
        load_selector_weights(fresh, tmp_path / "ckpt")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="token_selector.safetensors"):
        get_pruned_model(BUILDERS["llava"](), tmp_path / "ckpt")
    for name, tensor in fresh.token_selector.state_dict().items():
        assert torch.equal(tensor, before[name])


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava", "gemma3"])
def test_token_pixels_are_the_pixels_under_each_token(arch):
    """Oracle: a processed image with one bright token-sized block; only that token's pixel row is bright."""
    import numpy as np

    processor = tiny_processor(arch)
    model = get_pruned_model(BUILDERS[arch](), TokenPruneConfig(method="reconstruction"))
    # Qwen: 16 x 16 px -> 4 x 4 tokens of 4 x 4 px; LLaVA: 8 x 8 px (no resize) -> 4 x 4 tokens of 2 x 2 px.
    side = {"qwen2_5_vl": 4, "qwen3_vl": 4, "llava": 2, "gemma3": 4}[arch]  # Gemma 3: 4 x 4 pooled tokens of 4 x 4 px
    pixels = np.zeros((4 * side, 4 * side, 3), dtype=np.uint8)
    pixels[2 * side : 3 * side, side : 2 * side] = 255  # token (row 2, col 1) of the 4 x 4 grid
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], tokenize=False)
    inputs = processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt")
    vision_inputs, _ = model.split_vision_inputs(dict(inputs))
    (rows,) = model.prune_hooks.token_pixels(model, vision_inputs)
    assert rows.shape == (16, model.prune_hooks.token_pixel_dim(model))
    brightness = rows.mean(-1)
    assert brightness.argmax().item() == 2 * 4 + 1
    # Normalised white beats normalised black in every channel; every other token is all black.
    others = torch.cat([rows[: 2 * 4 + 1], rows[2 * 4 + 2 :]])
    assert rows[2 * 4 + 1].min() > others.max()
    assert torch.allclose(others, others[:1].expand_as(others), atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava", "gemma3"])
def test_image_reconstructor_trains(arch, tmp_path):
    _, _, trainer = make_trainer(arch, "reconstruction", tmp_path, image_reconstruction=True)
    reconstructor = trainer.model.recipe.image_reconstructor
    before = [p.detach().clone() for p in reconstructor.parameters()]
    trainer.train()
    assert all(not torch.equal(b, p) for b, p in zip(before, reconstructor.parameters(), strict=True))
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(entry["image_reconstruction_loss"]) for entry in logs)


@pytest.mark.parametrize("arch", ["internvl", "llava_onevision"])
def test_image_reconstruction_without_token_pixels_fails_before_training(arch, tmp_path):
    with pytest.raises(NotImplementedError, match="image_reconstruction"):
        make_trainer(arch, "reconstruction", tmp_path, image_reconstruction=True)


@pytest.mark.parametrize("method", METHODS)
def test_selector_and_train_only_modules_train_in_float32_on_a_bfloat16_model(method, tmp_path):
    """Issue 15, defect 1: AdamW on bf16 weights loses every update below a weight's bf16 spacing."""
    base = BUILDERS["qwen2_5_vl"]().to(torch.bfloat16)
    model = get_pruned_model(base, TokenPruneConfig(method=method))
    records = load_conversation_records(write_records(tmp_path), image_folder=tmp_path)
    # 5e-6 is the InternVL3 reconstruction recipe's rate: in bf16 most weights would not move at all.
    args = training_args(tmp_path / "out", max_steps=2, learning_rate=5e-6, save_strategy="steps", save_steps=2)
    trainer = TokenPruneTrainer(
        model=model,
        args=args,
        train_dataset=records,
        processing_class=tiny_processor("qwen2_5_vl"),
        image_folder=tmp_path,
    )
    frozen_before = {name: p.detach().clone() for name, p in base.named_parameters()}
    trainable = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in trainable.items()}
    trainer.train()

    assert all(p.dtype == torch.bfloat16 for p in base.parameters())
    for name, parameter in trainable.items():
        assert parameter.dtype == torch.float32, name
    for state in trainer.optimizer.state.values():
        assert all(value.dtype == torch.float32 for key, value in state.items() if key != "step")
    for name, frozen in frozen_before.items():
        assert torch.equal(frozen, dict(base.named_parameters())[name]), f"frozen {name} changed"
    # A trained weight is one the optimizer moved; bf16 would leave most of them unchanged at this rate.
    weights = [name for name, p in trainable.items() if p.ndim == 2 and p.abs().max() > 0]
    changed = torch.cat([(trainable[n].detach() != before[n]).flatten().float() for n in weights]).mean()
    assert changed > 0.9, f"only {changed:.0%} of the {method} weights moved"

    # The float32 checkpoint loads into a fresh bfloat16 model and prunes with it.
    reloaded = get_pruned_model(BUILDERS["qwen2_5_vl"]().to(torch.bfloat16), tmp_path / "out" / "checkpoint-2")
    inputs = trainer.data_collator([records[0], records[1]])
    inputs.pop("labels")
    out = reloaded.generate(**inputs, prune_budget=0.5, max_new_tokens=2, return_dict_in_generate=True)
    assert out.keep_mask.sum() < out.keep_mask.numel()


@pytest.mark.parametrize("method", METHODS)
def test_sample_budget_scope_trains_one_mask_per_sample(method, tmp_path):
    """Issue 15, defect 7: with train_budget_scope='sample' each recipe sees one unit per sample (all its images)."""
    from hf_tokenprune.testing import build_inputs, make_samples

    model = get_pruned_model(BUILDERS["qwen2_5_vl"](), TokenPruneConfig(method=method))
    args = training_args(tmp_path, train_budget=0.25, train_budget_scope="sample")
    training_model = TokenPruneTrainingModel(model, args)
    sizes = []
    original = training_model.recipe.segment_embeds if method != "reconstruction" else None
    if original is not None:
        training_model.recipe.segment_embeds = lambda model, segment, k, metrics, **prompt: (
            sizes.append((segment.embeds.shape[0], k)) or original(model, segment, k, metrics, **prompt)
        )
    inputs = build_inputs("qwen2_5_vl", make_samples([2, 1], [(8, 8), (16, 8)]))
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["input_ids"] == inputs["input_ids"][0, 0], -100)
    outputs = training_model(**inputs)
    outputs["loss"].backward()
    assert all(p.grad is not None for p in model.token_selector.parameters() if p.requires_grad)
    if original is not None:
        per_sample = (inputs["input_ids"] == model.config.image_token_id).sum(-1).tolist()
        assert sizes == [(n, max(1, math.floor(0.25 * n + 0.5))) for n in per_sample]
    with pytest.raises(ValueError, match="train_budget_scope"):
        training_args(tmp_path, train_budget_scope="batch")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_visionselector_attention_bias_mask_simulates_dropping(arch, attn, monkeypatch):
    """Issue 15, defect 3: with a binary soft mask, the default training forward (log m on the visual keys) gives
    the hard-pruned forward's loss; the paper's m * V does not (the first RMSNorm undoes most of the scaling)."""
    from hf_tokenprune.modeling.selection_ops import hard_topk_indices
    from hf_tokenprune.testing import IMAGE_ID, IMAGE_SIZES, VIDEO_ID, build_inputs, make_samples
    from hf_tokenprune.training.methods import visionselector as recipe_module

    def binary_topk(scores, k):
        mask = torch.zeros_like(scores)
        mask[hard_topk_indices(scores.detach(), k)] = 1.0
        return mask + scores - scores.detach()  # carries the selector's gradient, values exactly 0 / 1

    monkeypatch.setattr(recipe_module, "differentiable_topk", binary_topk)
    model = get_pruned_model(BUILDERS[arch](attn), TokenPruneConfig(method="visionselector"))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.token_selector.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    inputs = build_inputs(arch, make_samples([2, 0, 1], IMAGE_SIZES[arch]))
    ids = inputs["input_ids"]
    visual = (ids == IMAGE_ID) | (ids == VIDEO_ID)
    # Text tokens whose previous token is real text: the same predictions exist in the full and the pruned sequence.
    text = ~visual & inputs["attention_mask"].bool()
    after_text = torch.cat([torch.zeros_like(text[:, :1]), text[:, :-1]], dim=1)
    inputs["labels"] = ids.masked_fill(visual | ~after_text | (inputs["attention_mask"] == 0), -100)
    with torch.no_grad():
        hard = float(model(**inputs, prune_budget=0.3).loss)
        losses = {}
        for mode in ("attention_bias", "multiply"):
            args = training_args("unused", train_budget=0.3, soft_mask_mode=mode)
            losses[mode] = TokenPruneTrainingModel(model, args)(**inputs)["metrics"]["task_loss"]
    assert training_args("unused").soft_mask_mode == "attention_bias"
    assert losses["attention_bias"] == pytest.approx(hard, abs=1e-5)
    assert abs(losses["multiply"] - hard) > 1e-3
