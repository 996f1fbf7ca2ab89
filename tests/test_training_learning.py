"""The scorers learn: on a task whose answer sits in one known visual token, trained selectors keep that token.

Setup: 8 x 8 images of weak noise with one saturated 2 x 2 marker patch (one LLaVA visual token of 16) at a
random place; the answer is the marker's colour, red or blue. A tiny LLaVA is first trained (all weights) to
answer from the unpruned image, then frozen. At budget 0.2 (3 of 16 tokens) a selector that ignores content
keeps the marker 3/16 of the time; `random` is measured alongside as the baseline.
"""

from __future__ import annotations

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
        args = TokenPruneTrainingArguments(
            output_dir=str(tmp_path / method),
            max_steps=60,
            per_device_train_batch_size=16,
            learning_rate=learning_rate,
            lr_scheduler_type="constant",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        collate = lambda items, generator=generator: marker_batch(len(items), generator)[0]  # noqa: E731
        TokenPruneTrainer(model=model, args=args, train_dataset=Endless(), data_collator=collate).train()
        rates[method] = marker_kept_rate(model, None, prompt, where)
    print(
        f"marker kept at budget 0.2: random {random_rate:.3f}, " + ", ".join(f"{m} {r:.3f}" for m, r in rates.items())
    )
    assert random_rate < 0.3  # 3 of 16 tokens: 0.1875 expected
    for method, rate in rates.items():
        assert rate > 0.9, f"{method} kept the marker in {rate:.1%} of images (random: {random_rate:.1%})"
