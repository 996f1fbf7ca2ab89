"""The scorers learn: on a task whose answer sits in one known visual token, trained selectors keep that token.

Setup: 8 x 8 images of weak noise with one saturated 2 x 2 marker patch (one LLaVA visual token of 16) at a
random place; the answer is the marker's colour, red or blue. A tiny LLaVA is first trained (all weights) to
answer from the unpruned image, then frozen. At budget 0.2 (3 of 16 tokens) a selector that ignores content
keeps the marker 3/16 of the time; `random` is measured alongside as the baseline.
"""

from __future__ import annotations

import pytest
import torch

from hf_tokenprune import TokenPruneConfig, TokenPruneTrainer, TokenPruneTrainingArguments, get_pruned_model
from hf_tokenprune.testing import BOS, IMAGE_ID, tiny_llava, tiny_tokenizer

SIDE, PATCH, TOKENS = 4, 2, 16
TOKENIZER = tiny_tokenizer()
RED, BLUE = TOKENIZER.convert_tokens_to_ids(["red", "blue"])
QUESTION = TOKENIZER("what colour", add_special_tokens=False)["input_ids"]
COLOURS = torch.tensor([[2.0, -2.0, -2.0], [-2.0, -2.0, 2.0]])


def marker_batch(size: int, generator: torch.Generator):
    """(inputs with labels on the answer, marker token index per sample)."""
    pixels = 0.3 * torch.randn(size, 3, SIDE * PATCH, SIDE * PATCH, generator=generator)
    where = torch.randint(0, TOKENS, (size,), generator=generator)
    colour = torch.randint(0, 2, (size,), generator=generator)
    for i in range(size):
        row, col = divmod(int(where[i]), SIDE)
        pixels[i, :, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = COLOURS[
            colour[i], :, None, None
        ]
    answer = torch.where(colour == 0, RED, BLUE)
    prompt = torch.tensor([BOS] + [IMAGE_ID] * TOKENS + QUESTION).repeat(size, 1)
    input_ids = torch.cat([prompt, answer[:, None]], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[:, -1] = answer
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixels,
        "labels": labels,
    }, where


class Endless(torch.utils.data.Dataset):
    def __len__(self):
        return 1_000_000

    def __getitem__(self, index):
        return index


def trained_base():
    torch.manual_seed(0)
    base = tiny_llava().train()
    optimizer = torch.optim.AdamW(base.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(80):
        batch, _ = marker_batch(32, generator)
        loss = base(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return base.eval().requires_grad_(False)


def marker_training_args(output_dir, learning_rate: float, max_steps: int, **overrides):
    """Constant-rate CPU training on batches of 16 marker images, no checkpoints."""
    return TokenPruneTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=16,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **overrides,
    )


def marker_kept_rate(model, method, inputs, where):
    with torch.no_grad():
        keep = model(**inputs, prune_budget=0.2, prune_method=method).keep_mask
    return keep[:, 1 : 1 + TOKENS][torch.arange(len(where)), where].float().mean().item()


def test_learned_selectors_keep_the_answer_token_far_more_often_than_random(tmp_path):
    base = trained_base()
    test_batch, where = marker_batch(256, torch.Generator().manual_seed(99))
    prompt = {key: test_batch[key][:, :-1] for key in ("input_ids", "attention_mask")}
    prompt["pixel_values"] = test_batch["pixel_values"]
    # The frozen base must answer from the image, else no selector could learn where to look.
    logits = base(**prompt).logits[:, -1]
    assert (logits.argmax(-1) == test_batch["labels"][:, -1]).float().mean() > 0.95

    random_rate = marker_kept_rate(get_pruned_model(base, TokenPruneConfig(method="random")), None, prompt, where)
    rates = {}
    for method, learning_rate in (("visionselector", 3e-2), ("autoselect", 1e-3)):
        model = get_pruned_model(base, TokenPruneConfig(method=method))
        generator = torch.Generator().manual_seed(5)
        args = marker_training_args(tmp_path / method, learning_rate, max_steps=60)
        collate = lambda items, generator=generator: marker_batch(len(items), generator)[0]  # noqa: E731
        TokenPruneTrainer(model=model, args=args, train_dataset=Endless(), data_collator=collate).train()
        rates[method] = marker_kept_rate(model, None, prompt, where)
    print(
        f"marker kept at budget 0.2: random {random_rate:.3f}, " + ", ".join(f"{m} {r:.3f}" for m, r in rates.items())
    )
    assert random_rate < 0.3  # 3 of 16 tokens: 0.1875 expected
    for method, rate in rates.items():
        assert rate > 0.9, f"{method} kept the marker in {rate:.1%} of images (random: {random_rate:.1%})"


def recipe_loss(training_model, batch, draws: int = 4) -> float:
    """Mean over `draws` seeded draws of the recipe's noise (VP noise, Gumbel), the same before and after training."""
    losses = []
    for seed in range(draws):
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.append(float(training_model(**batch)["loss"]))
    return sum(losses) / draws


def soft_mass_in_hard_topk(model, recipe, batch, k: int) -> float:
    """Share of the soft mask's mass (at the schedules' final values) that lies on the hard top-k tokens."""
    from hf_tokenprune.modeling.selection_ops import hard_topk_indices
    from hf_tokenprune.training.relaxations import differentiable_topk, soft_topk

    vision_inputs, _ = model.split_vision_inputs(batch)
    selector = model.token_selector
    shares = []
    with torch.no_grad():
        placed = model.place_visual_segments(
            batch["input_ids"], vision_inputs, selector.feature_source != "projector_output"
        )
        for segment, _, _ in placed:
            features = segment.features if selector.feature_source == "vision_features" else segment.embeds
            scores = selector.score(features.float())
            if hasattr(recipe, "temperature"):
                soft = soft_topk(scores, k, temperature=recipe.args.tau_end)
            else:
                soft = differentiable_topk(scores, k)
            shares.append(float(soft[hard_topk_indices(scores, k)].sum() / soft.sum()))
    return sum(shares) / len(shares)


@pytest.mark.parametrize(
    "method, learning_rate", [("visionselector", 3e-2), ("autoselect", 1e-3), ("reconstruction", 1e-3)]
)
def test_each_recipe_learns_in_bf16_base_with_float32_selector(method, learning_rate, tmp_path):
    """Issue 15: in a few dozen steps on a bf16 base with a float32 selector, each recipe moves the selector's
    weights and lowers its own loss on a held-out batch; for the two soft top-k recipes the hard top-k at the train
    budget holds at least 75% of the soft mask's mass at the end (at the annealed temperature for autoselect)."""
    base = trained_base().to(torch.bfloat16)
    model = get_pruned_model(base, TokenPruneConfig(method=method))
    generator = torch.Generator().manual_seed(5)
    args = marker_training_args(tmp_path / method, learning_rate, max_steps=40, train_budget=0.2)
    collate = lambda items: marker_batch(len(items), generator)[0]  # noqa: E731
    trainer = TokenPruneTrainer(model=model, args=args, train_dataset=Endless(), data_collator=collate)
    held_out, _ = marker_batch(64, torch.Generator().manual_seed(77))
    training_model = trainer.model
    for schedule in training_model.recipe.schedules(args):  # the loss at the schedules' final values, both times
        setattr(training_model.recipe, schedule.attribute, schedule.end)
    loss_before = recipe_loss(training_model, held_out)
    selector_before = {name: p.detach().clone() for name, p in model.token_selector.named_parameters()}
    trainer.train()
    for schedule in training_model.recipe.schedules(args):
        setattr(training_model.recipe, schedule.attribute, schedule.end)
    loss_after = recipe_loss(training_model, held_out)
    assert all(p.dtype == torch.float32 for p in model.token_selector.parameters())
    assert all(p.dtype == torch.bfloat16 for p in base.parameters())
    moved = [not torch.equal(p, selector_before[name]) for name, p in model.token_selector.named_parameters()]
    assert all(moved), f"{sum(moved)} of {len(moved)} selector tensors moved"
    assert loss_after < loss_before, f"{method}: held-out recipe loss {loss_before:.4f} -> {loss_after:.4f}"
    if method != "reconstruction":
        share = soft_mass_in_hard_topk(model, training_model.recipe, held_out, k=3)
        print(f"{method}: loss {loss_before:.4f} -> {loss_after:.4f}, soft mass on the hard top-3 {share:.1%}")
        assert share >= 0.75
