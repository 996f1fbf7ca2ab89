"""The testbed recipe end to end: task data -> VLM trained from scratch -> selectors -> eval table -> bundle.

    hf-tokenprune reproduce --output runs/testbed

1. The VLM (stock Qwen2.5-VL class, `model.new_testbed_model`) is trained from scratch with the stock `Trainer` on
   examples generated from seeds of the train split: first its vision tower alone on per-token labels named in the
   language model's own word embeddings (`VisionPretraining`); then, with the whole tower frozen and its output
   rescaled to the word embeddings' norm (`match_feature_scale`), the language model on questions (asked before the
   image) and captions, labels on the answers only, over records whose visual tokens are computed once
   (`CachedVisualTokens`).
2. Selector training data: train-split records written to disk (JPEG + LLaVA-style JSON), because the selectors are
   trained through the library's own training entry point (`run_train`, what `hf-tokenprune train` runs), like any
   user's.
3. Each learned selector is trained with its recipe and saved as an adapter repo next to the base.
4. `hf-tokenprune eval` over the test split at budgets 0.1, 0.2, 0.3, 0.5 for every method.
5. With `--bundle`, the base and what training produced of each adapter are written into `--bundle_dir` (default:
   the source checkout's `examples/testbed/default_model/`, the bundled default; see `bundled.bundle`).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from hf_tokenprune import get_pruned_model, write_model_card
from hf_tokenprune.training import TokenPruneDataCollator, TokenPruneTrainingArguments
from hf_tokenprune.training.entry import TrainDataArguments, TrainModelArguments, run_train
from hf_tokenprune.training.recipe import check_fraction

from .model import BUNDLED_METHODS, CAPTION_PROMPT, TEXT_SIZES, check_text_width, new_testbed_model
from .scenes import TASKS, check_task


def conversation_record(image, prompt: str, answer: str) -> dict:
    """A LLaVA-style conversation record: `prompt`, the image (a PIL image or a path), `prompt` again from the user,
    then `answer` (the testbed's prompt layout, `model.messages_for`).

    Why the question comes before the image: in a causal language model every visual token then reads the question,
    so a token can mark itself as the evidence where it sits, and the answer only has to gather the marked tokens.
    With the image first, the answer position must find the evidence among ~100 tokens by itself, and the VLM
    trained from scratch here stayed near the answer prior (30% test accuracy after 2,600 steps). Why it is asked
    again after the image: the answer position then reads what kind of answer is wanted next to it instead of
    across a few hundred visual tokens; with the question before the image only, the v2 VLM answered colour
    questions with count words after 1,500 steps.
    """
    return {
        "images": [image],
        "conversations": [
            {"from": "human", "value": f"{prompt}\n<image>\n{prompt}"},
            {"from": "gpt", "value": answer},
        ],
    }


def example_record(example) -> dict:
    """An example as a conversation record holding its PIL image."""
    return conversation_record(example.image, example.question, example.answer)


def caption_record(example) -> dict:
    """The example's image with a caption to learn: every object left to right, "<colour> <shape>" for a shape
    and "<colour> box <word>" for a word box.

    Why: a question's wording alone tells the answer's prior (yes/no, a colour, a count), and a VLM trained from
    scratch on questions only sat at that prior for its whole 2,500-step run here. A caption has no such shortcut:
    every word needs the image.
    """
    return conversation_record(example.image, CAPTION_PROMPT, caption_text(example))


def caption_text(example) -> str:
    """Every object of the example left to right: "<colour> <shape>" or "<colour> box <word>"."""
    parts = [
        f"{item.colour} box {item.word}" if item.word is not None else f"{item.colour} {item.shape}"
        for item in sorted(example.objects, key=lambda item: (item.box[0] + item.box[2], item.box[1]))
        if not item.clutter  # v2: clutter is what no question (and no caption) is about
    ]
    return " ".join(parts)


class GeneratedExamples(torch.utils.data.Dataset):
    """`n` examples of a split from consecutive seeds, `first` seeds into it, generated on demand (none held)."""

    def __init__(self, split: str, n: int, first: int = 0, task: str = "v2", scene: str = "full") -> None:
        from .scenes import SCENES
        from .tasks import SPLIT_SEED_OFFSETS

        if scene not in SCENES:
            raise ValueError(f"`scene` must be one of {tuple(SCENES)}, got {scene!r}")
        self.spec = SCENES[scene]

        if split not in SPLIT_SEED_OFFSETS:
            raise ValueError(f"`split` must be one of {tuple(SPLIT_SEED_OFFSETS)}, got {split!r}")
        self.first_seed = SPLIT_SEED_OFFSETS[split] + first
        self.n = n
        self.task = check_task(task)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        from .scenes import task_example

        if not 0 <= index < self.n:
            raise IndexError(index)
        return task_example(self.first_seed + index, self.task, spec=self.spec)


class GeneratedRecords(GeneratedExamples):
    """Conversation records of `GeneratedExamples`; every `caption_every`-th one (0: none) is a caption
    (`caption_record`) instead of the example's question."""

    def __init__(
        self, split: str, n: int, caption_every: int = 0, first: int = 0, task: str = "v2", scene: str = "full"
    ) -> None:
        super().__init__(split, n, first, task, scene)
        self.caption_every = caption_every

    def __getitem__(self, index: int) -> dict:
        example = super().__getitem__(index)
        caption = bool(self.caption_every) and index % self.caption_every == 0
        record = caption_record(example) if caption else example_record(example)
        relevance = token_relevance(example, CAPTION_PROMPT if caption else example.question)
        if relevance is not None:
            record["token_relevance"] = torch.from_numpy(relevance)
        return record


def token_relevance(example, prompt: str):
    """(tokens,) float32 in raster order for a v2 example (None for v1): 1 where the cell holds an object that
    `prompt` is about, i.e. that has every shape and colour the prompt names (for the caption prompt: every object,
    clutter never), else 0. POPE-style "no" questions have no relevant token.

    What `RelevanceTrainer` teaches the visual tokens to flag (see there for why).
    """
    from .scenes import CELL
    from .tasks import COLOURS, shapes_named

    if example.grid is None:
        return None
    rows, cols = example.grid
    shapes = set(shapes_named(prompt))
    colours = set(prompt.split()) & set(COLOURS)
    relevance = np.zeros((rows, cols), dtype=np.float32)
    for item in example.objects:
        if item.clutter or (shapes and item.shape not in shapes) or (colours and item.colour not in colours):
            continue
        relevance[item.box[1] // CELL, item.box[0] // CELL] = 1.0
    return relevance.reshape(-1)


class RelevanceTrainer(Trainer):
    """The stock Trainer's causal-LM loss plus an auxiliary one that makes each visual token say, `relevance_layer`
    layers deep, whether the question is about it: the tied output layer read at that depth (final norm, then the
    LM head), softmax over the words "yes" / "no", cross-entropy against `token_relevance`, each class weighted to
    half of the term (relevant tokens are ~1% of an image).

    Why: trained on answers alone, the from-scratch language model sat at the answer prior for ~15,000 steps
    (docs/testbed.md): finding the asked object among ~200 tokens is a two-step circuit (each token compares itself
    with the question, then the answer gathers the matches) that a one-word answer gives almost no gradient to
    until it half works. Real VLMs come out of pre-training with that grounding; this loss gives it to the testbed's
    VLM directly. It shapes only the visual tokens' states; answers are still learned from the answer loss, and
    prediction never reads the visual positions' logits.

    With `gather_weight` > 0 a second auxiliary term (`_gather_loss`, eager attention) points head 0 of layer
    `relevance_layer` (the first to read the flags) at the relevant tokens from the position that predicts the
    answer. Measured on easy v2 scenes, 2,000 steps from the same stage-1 tower: with the relevance term alone
    (and captions) the answer loss left the prior only at the end; with both terms and no captions the gather
    loss fell below 0.1 by step 900 and validation accuracy reached 71.5% (attribute 82, identity 78, count 30,
    existence 96).
    """

    def __init__(
        self,
        *args,
        relevance_weight: float = 1.0,
        relevance_layer: int = 2,
        yes_no_ids=(),
        gather_weight: float = 0.0,
        count_weight: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.relevance_weight = relevance_weight
        self.relevance_layer = relevance_layer
        self.gather_weight = gather_weight
        self.count_weight = count_weight
        self.yes_no_ids = list(yes_no_ids)
        self._parts = {"answer_loss": [], "relevance_loss": [], "gather_loss": [], "count_loss": []}

    def log(self, logs, *args, **kwargs):  # the two terms' means since the last log line, beside the total
        if "loss" in logs:
            for name, values in self._parts.items():
                if values:
                    logs[name] = round(sum(values) / len(values), 4)
                values.clear()
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        relevance = inputs.pop("token_relevance", None)
        if relevance is None or self.relevance_weight == 0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        attend = self.gather_weight > 0 or self.count_weight > 0
        outputs = model(**inputs, output_hidden_states=True, output_attentions=attend)
        loss = outputs.loss
        for name, weight, term in (
            ("gather_loss", self.gather_weight, self._gather_loss),
            ("count_loss", self.count_weight, self._count_loss),
        ):
            if weight > 0:
                value = term(
                    inputs["input_ids"],
                    inputs["labels"],
                    relevance,
                    outputs.attentions[self.relevance_layer],
                    model.config.image_token_id,
                )
                if value is not None:
                    if model.training:
                        self._parts[name].append(value.item())
                    loss = loss + weight * value
        hidden = outputs.hidden_states[self.relevance_layer]
        visual = inputs["input_ids"] == model.config.image_token_id
        states = model.model.language_model.norm(hidden[visual])
        logits = model.lm_head(states)[:, self.yes_no_ids]  # (visual tokens, 2): yes, no
        target = relevance[relevance >= 0]  # padded with -1; raster order per record = the image tokens' order
        losses = torch.nn.functional.cross_entropy(logits.float(), (target < 0.5).long(), reduction="none")
        positive = target > 0.5
        terms = [losses[mask].mean() for mask in (positive, ~positive) if mask.any()]
        auxiliary = torch.stack(terms).mean()
        if model.training:
            self._parts["answer_loss"].append(outputs.loss.item())
            self._parts["relevance_loss"].append(auxiliary.item())
        loss = loss + self.relevance_weight * auxiliary
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _answer_rows(input_ids, labels, relevance, image_token_id: int):
        """(row, position that predicts the row's first answer token, positions of its relevant visual tokens) for
        each record that has a relevant token."""
        first = (labels != -100).float().argmax(dim=1) - 1  # logits at t predict the label at t + 1
        for row in range(len(input_ids)):
            visual = (input_ids[row] == image_token_id).nonzero().squeeze(1)
            relevant = visual[relevance[row][: len(visual)] > 0.5]
            if len(relevant) and first[row] >= 0:
                yield row, int(first[row]), relevant

    @classmethod
    def _gather_loss(cls, input_ids, labels, relevance, attentions, image_token_id: int):
        """-log of the attention mass that head 0 of one layer puts on the relevant visual tokens from the position
        that predicts the first answer token, mean over the records that have a relevant token (None if none has).
        attentions: (batch, heads, query, key) of that layer (eager attention)."""
        terms = [
            -torch.log(attentions[row, 0, query, relevant].sum() + 1e-6)
            for row, query, relevant in cls._answer_rows(input_ids, labels, relevance, image_token_id)
        ]
        return torch.stack(terms).mean() if terms else None

    @classmethod
    def _count_loss(cls, input_ids, labels, relevance, attentions, image_token_id: int):
        """Cross-entropy of head 1's attention (same layer and query as `_gather_loss`) against the uniform
        distribution over the relevant tokens plus the query position itself, minus its minimum (so 0 when met).

        Why: head 0 spreads its mass evenly over the n matches, so what it reads is the same for one match as for
        four, and counting stayed at 42% (docs/testbed.md). Uniform over the n matches and one fixed position, the
        weight on that position is 1 / (n + 1): the head's output carries n in the share of its own token's value.
        """
        terms = []
        for row, query, relevant in cls._answer_rows(input_ids, labels, relevance, image_token_id):
            keys = torch.cat([relevant, relevant.new_tensor([query])])
            terms.append(-torch.log(attentions[row, 1, query, keys] * len(keys) + 1e-6).mean())
        return torch.stack(terms).mean() if terms else None


class CachedVisualTokens(torch.utils.data.Dataset):
    """Training items of conversation `records` for a VLM whose whole vision tower (merger included) is frozen: each
    record's model inputs, its visual tokens computed once by the tower instead of on every step of every epoch.

    Why: with the tower frozen, its forward pass is still most of a stage-2 step on CPU (the language model here is
    tiny), yet the tokens it gives an image never change. `collate_cached` hands them to the stock forward through
    its `mm_encoder_outputs` argument, so the language model sees exactly what `pixel_values` would give it (a test
    checks that the losses match). Records must hold one image each.
    """

    def __init__(self, model, processor, records, batch_size: int = 32, num_workers: int = 1) -> None:
        from tqdm.auto import tqdm

        collator = TokenPruneDataCollator(processor)

        def collate(records):  # a record's `token_relevance` (see `token_relevance`) is passed through as is
            relevance = [record.pop("token_relevance", None) for record in records]
            return collator(records), relevance

        loader = torch.utils.data.DataLoader(
            records, batch_size=batch_size, collate_fn=collate, num_workers=num_workers
        )
        self.items = []
        for batch, relevance in tqdm(loader, desc="visual tokens", unit="batch"):
            grid = batch["image_grid_thw"]
            if len(grid) != len(batch["input_ids"]):
                raise ValueError("`records` must hold exactly one image each")
            with torch.no_grad():  # the stock method: the tower's tokens, split per image
                tokens = model.model.get_image_features(batch["pixel_values"], grid).pooler_output
            for row, row_tokens in enumerate(tokens):
                real = batch["attention_mask"][row].bool()
                item = {key: batch[key][row][real] for key in ("input_ids", "labels", "mm_token_type_ids")}
                if relevance[row] is not None:
                    if len(relevance[row]) != len(row_tokens):
                        raise ValueError("a record's `token_relevance` must have one entry per visual token")
                    item["token_relevance"] = relevance[row]
                self.items.append({**item, "image_grid_thw": grid[row : row + 1], "visual_tokens": row_tokens.clone()})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def collate_cached(items: list[dict], pad_token_id: int) -> dict:
    """A batch of `CachedVisualTokens` items as keyword arguments of the stock Qwen2.5-VL forward (right padding)."""
    from torch.nn.utils.rnn import pad_sequence
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    def pad(key, value):
        return pad_sequence([item[key] for item in items], batch_first=True, padding_value=value)

    input_ids = pad("input_ids", pad_token_id)
    lengths = torch.tensor([len(item["input_ids"]) for item in items])
    return {
        "input_ids": input_ids,
        "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
        "labels": pad("labels", -100),
        "mm_token_type_ids": pad("mm_token_type_ids", 0),
        "image_grid_thw": torch.cat([item["image_grid_thw"] for item in items]),
        "mm_encoder_outputs": {
            "image": BaseModelOutputWithPooling(pooler_output=[item["visual_tokens"] for item in items])
        },
        **({"token_relevance": pad("token_relevance", -1.0)} if "token_relevance" in items[0] else {}),
    }


class TokenDropout:
    """Collator for `CachedVisualTokens` items that, in a `share` of the records, leaves out a random part of the
    visual tokens the question is not about (every token `token_relevance` marks stays; the kept fraction of the
    others is uniform in [`minimum`, 1]) and keeps the rest at their unpruned M-RoPE positions, as a pruning method
    hands them to the language model. Returns `collate_cached`'s batch plus explicit `position_ids` (3, batch, length).

    Why: a from-scratch VLM that has only ever seen whole images can read the number of visual tokens itself (a
    softmax's share of mass on its own position, which is how `RelevanceTrainer`'s count head counts), so any pruning,
    even one that keeps all the evidence, moves its answers: testbed-v3 kept 96.9% of the evidence at budget 0.1 and
    still lost 42 points on counting (docs/testbed.md). Real VLMs lose little when tokens nobody asked about go; this
    teaches the testbed's the same without telling it which method prunes (the dropped tokens are chosen at random,
    so every method that keeps the evidence gains alike). Done by hand: no library augments multimodal token
    sequences at the language model's input.
    """

    def __init__(self, model, pad_token_id: int, share: float, minimum: float = 0.05, seed: int = 0) -> None:
        if not 0 <= share <= 1 or not 0 <= minimum <= 1:
            raise ValueError(f"`share` and `minimum` must be in [0, 1], got {share} and {minimum}")
        self.model, self.pad_token_id, self.share, self.minimum = model, pad_token_id, share, minimum
        self.generator = torch.Generator().manual_seed(seed)

    def keep_mask(self, item: dict) -> torch.Tensor:
        """(length,) bool: which of the item's tokens to keep (all of them unless this record is thinned out)."""
        ids = item["input_ids"]
        keep = torch.ones(len(ids), dtype=torch.bool)
        if torch.rand((), generator=self.generator) >= self.share:
            return keep
        visual = (ids == self.model.config.image_token_id).nonzero().squeeze(1)
        relevance = item.get("token_relevance")
        others = visual if relevance is None else visual[relevance[: len(visual)] < 0.5]
        fraction = self.minimum + (1 - self.minimum) * torch.rand((), generator=self.generator).item()
        order = torch.randperm(len(others), generator=self.generator)
        keep[others[order[round(fraction * len(others)) :]]] = False
        return keep

    def __call__(self, items: list[dict]) -> dict:
        thinned, positions = [], []
        for item in items:
            ids = item["input_ids"]
            with torch.no_grad():  # the stock positions of the whole sequence, before any token goes
                position, _ = self.model.model.get_rope_index(
                    ids[None],
                    mm_token_type_ids=item["mm_token_type_ids"][None],
                    image_grid_thw=item["image_grid_thw"],
                    attention_mask=torch.ones_like(ids)[None],
                )
            keep = self.keep_mask(item)
            visual_keep = keep[ids == self.model.config.image_token_id]
            kept = {key: item[key][keep] for key in ("input_ids", "labels", "mm_token_type_ids")}
            kept.update(image_grid_thw=item["image_grid_thw"], visual_tokens=item["visual_tokens"][visual_keep])
            if "token_relevance" in item:
                kept["token_relevance"] = item["token_relevance"][visual_keep]
            thinned.append(kept)
            positions.append(position[:, 0, keep])
        batch = collate_cached(thinned, self.pad_token_id)
        position_ids = torch.ones(3, len(items), batch["input_ids"].shape[1], dtype=torch.long)  # pads: 1, as stock
        for row, position in enumerate(positions):
            position_ids[:, row, : position.shape[1]] = position
        batch["position_ids"] = position_ids
        return batch


# ----------------------------------------------------------------------------------------- stage 1: the vision tower
def token_labels(example) -> torch.Tensor:
    """Per-token stage-1 labels of `example`, raster order, one column per group of `scenes.label_names`.

    v2 images lie on the token grid, so a cell's label is its glyph; v1 goes through `v1_token_labels`.
    """
    from .scenes import grid_token_labels

    if example.grid is not None:
        return torch.from_numpy(grid_token_labels(example))
    return v1_token_labels(example)


def v1_token_labels(example) -> torch.Tensor:
    """(tokens, 3) labels of each visual token's 28 px cell, raster order: colour, shape and word of the object that
    covers at least a fifth of the cell or whose centre lies in it (0 = background; shape 6 = word box)."""
    from .tasks import COLOURS, SHAPES, WORDS, token_grid

    width, height = example.image.size
    rows, cols = token_grid(width, height)
    scale_x, scale_y = cols / width, rows / height  # pixels -> cells
    labels = torch.zeros(rows, cols, 3, dtype=torch.long)
    for item in example.objects:
        x0, y0, x1, y1 = item.box[0] * scale_x, item.box[1] * scale_y, item.box[2] * scale_x, item.box[3] * scale_y
        label = torch.tensor(
            [
                COLOURS.index(item.colour) + 1,
                len(SHAPES) + 1 if item.word is not None else SHAPES.index(item.shape) + 1,
                WORDS.index(item.word) + 1 if item.word is not None else 0,
            ]
        )
        centre = (int((y0 + y1) / 2), int((x0 + x1) / 2))
        for row in range(int(y0), min(rows, int(y1) + 1)):
            for col in range(int(x0), min(cols, int(x1) + 1)):
                overlap = max(0.0, min(x1, col + 1) - max(x0, col)) * max(0.0, min(y1, row + 1) - max(y0, row))
                if overlap >= 0.2 or (row, col) == centre:
                    labels[row, col] = label
    return labels.reshape(-1, 3)


class VisionPretraining(torch.nn.Module):
    """The VLM's vision tower with a temporary head that names what each visual token shows, in the language model's
    own words.

    Why dense labels: language-model loss alone reaches the vision tower of a VLM trained from scratch only through
    attention that does not yet know where to look; on 2 CPU cores that plateau outlasts the training budget. Dense
    per-token labels (which the task generator knows exactly) teach the tower colours, shapes and words directly.

    Why the language model's words: a class's weight is the word embedding of its name ("red", "star", "box",
    "cat"), and the logits are cosines times a learned scale, so a token that shows a red star comes out pointing
    along embed("red") + embed("star"). The language model then finds the evidence for "which shape is red" by
    matching a question word against the same vector in a visual token, and answers by copying it (the output layer
    is tied to the embeddings), instead of learning a map between two unrelated bases first. Each group's background
    class has a vector of its own. Only the tower, its merger, the class words' embeddings, the background vectors
    and the scale train; the head is then discarded and the stock architecture trained on as usual.
    """

    def __init__(self, vlm, tokenizer, task: str = "v2") -> None:
        from .scenes import label_names

        super().__init__()
        self.visual = vlm.model.visual
        self.embeddings = vlm.get_input_embeddings()
        # Label groups as `token_labels` numbers them, class 0 (background) first; a v1 word box's shape is "box".
        names = label_names(task)
        class_ids = [token for group in names for token in tokenizer.convert_tokens_to_ids(list(group))]
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in class_ids:
            raise ValueError("every colour, shape and word of the task must be a word of the tokenizer")
        self.register_buffer("class_ids", torch.tensor(class_ids), persistent=False)
        self.sizes = tuple(len(group) + 1 for group in names)
        hidden_size = vlm.config.text_config.hidden_size
        self.background = torch.nn.Parameter(
            torch.randn(len(names), hidden_size) * vlm.config.text_config.initializer_range
        )
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def group_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Per label group, (tokens, classes) logits: scale x cosine(feature, class vector)."""
        features = torch.nn.functional.normalize(features, dim=-1)
        words = self.embeddings(self.class_ids).split([size - 1 for size in self.sizes])
        logits = []
        for background, group_words in zip(self.background, words, strict=True):
            classes = torch.cat([background[None], group_words])
            logits.append(self.scale * features @ torch.nn.functional.normalize(classes, dim=-1).T)
        return logits

    def forward(self, pixel_values, image_grid_thw, token_labels):
        features = self.visual(pixel_values, grid_thw=image_grid_thw).pooler_output
        loss = 0.0
        for group, part in enumerate(self.group_logits(features)):
            labels = token_labels[:, group]
            losses = torch.nn.functional.cross_entropy(part, labels, reduction="none")
            # Background cells are most of an image: without a term of their own the cells that show an object
            # (3-10%, and word cells fewer still) barely steer the tower, which then tells shapes and words apart
            # poorly (a probe read 61% of shapes and 20% of words off the tokens after 600 steps).
            shown = labels > 0
            loss = loss + losses.mean() + (losses[shown].mean() if shown.any() else 0.0)
        return {"loss": loss}


class VisionPretrainingCollator:
    def __init__(self, processor) -> None:
        self.image_processor = processor.image_processor

    def __call__(self, examples) -> dict:
        batch = self.image_processor([example.image for example in examples], return_tensors="pt")
        labels = torch.cat([token_labels(example) for example in examples])
        return {
            "pixel_values": batch["pixel_values"],
            "image_grid_thw": batch["image_grid_thw"],
            "token_labels": labels,
        }


def _training_arguments(
    output_dir: Path, steps: int, batch_size: int, learning_rate: float, seed: int, logs: int, num_workers: int = 1
):
    """The testbed VLM's two training stages: cosine schedule, 5% warm-up, `logs` log lines, no checkpoints;
    `num_workers` data-loader processes (0 when the items are in this process's memory already)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, steps // logs),
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        seed=seed,
        dataloader_num_workers=num_workers,
    )


def pretrain_vision(model, processor, output_dir: Path, steps: int, batch_size: int, learning_rate: float, seed: int):
    """Stage 1: train `model`'s vision tower on per-token labels with the stock Trainer (in place)."""
    wrapper = VisionPretraining(model, processor.tokenizer)
    args = _training_arguments(output_dir / "vision-trainer", steps, batch_size, learning_rate, seed, logs=20)
    # Seeds past the VLM stage's, so the two stages see different images.
    dataset = GeneratedExamples("train", steps * batch_size, first=5_000_000)
    trainer = Trainer(
        model=wrapper, args=args, train_dataset=dataset, data_collator=VisionPretrainingCollator(processor)
    )
    trainer.train()
    return trainer.state.log_history


@torch.no_grad()
def match_feature_scale(model, processor, images: int = 32) -> float:
    """Scale the vision merger's output layer so visual tokens enter the language model at the mean norm of its word
    embeddings; returns the factor applied.

    Why: stage 1's cosine head is indifferent to scale and leaves visual features ~30x longer than word embeddings.
    In a pre-norm transformer a token's residual stream then hardly moves under attention, so a visual token cannot
    take in the question it follows. A linear rescale keeps everything stage 1 taught the tower.
    """
    examples = GeneratedExamples("train", images, first=4_000_000)
    batch = processor.image_processor([example.image for example in examples], return_tensors="pt")
    features = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    words = model.get_input_embeddings().weight
    factor = (words.norm(dim=-1).mean() / features.norm(dim=-1).mean()).item()
    output_layer = model.model.visual.merger.mlp[-1]
    output_layer.weight.mul_(factor)
    output_layer.bias.mul_(factor)
    return factor


class Round(NamedTuple):
    """One stage-2 round of `vlm_schedule`."""

    steps: int
    learning_rate: float
    scene: str
    records: int
    count_weight: float
    drop: float = 0.0


def parse_schedule(schedule: str, records: int) -> list[Round]:
    """`"1000:1e-3:easy,2000:2e-3:full:8000:1,500:1e-3:full:6000:1:0.5"` -> [Round(1000, 0.001, "easy", records, 0.0,
    0.0), Round(2000, 0.002, "full", 8000, 1.0, 0.0), Round(500, 0.001, "full", 6000, 1.0, 0.5)]: steps, peak learning
    rate, the round's scenes (`scenes.SCENES`, default full), how many fresh records it trains on (default `records`),
    the weight of `RelevanceTrainer`'s count term (default 0) and the share of records whose irrelevant visual tokens
    are thinned out (`TokenDropout`, default 0); a malformed round names `vlm_schedule`."""
    from .scenes import SCENES

    rounds = []
    for part in schedule.split(","):
        try:
            steps, learning_rate, *rest = part.split(":")
            if len(rest) > 4:
                raise ValueError
            scene = rest[0] if rest else "full"
            count = int(rest[1]) if len(rest) > 1 else records
            weight = float(rest[2]) if len(rest) > 2 else 0.0
            drop = float(rest[3]) if len(rest) > 3 else 0.0
            rounds.append(Round(int(steps), float(learning_rate), scene, count, weight, drop))
        except ValueError:
            raise ValueError(
                "`vlm_schedule` rounds are `steps:learning_rate[:scenes[:records[:count_weight[:drop]]]]`, got "
                f"{part!r} in {schedule!r}"
            ) from None
        if rounds[-1].steps < 1 or not rounds[-1].learning_rate > 0 or rounds[-1].records < 1:
            raise ValueError(
                f"`vlm_schedule` needs steps >= 1, a positive learning rate and records >= 1, got {part!r}"
            )
        if not rounds[-1].count_weight >= 0:
            raise ValueError(f"`vlm_schedule`: a round's count weight must be >= 0, got {part!r}")
        if not 0 <= rounds[-1].drop <= 1:
            raise ValueError(f"`vlm_schedule`: a round's drop share must be in [0, 1], got {part!r}")
        if rounds[-1].scene not in SCENES:
            raise ValueError(f"`vlm_schedule`: a round's scenes must be one of {tuple(SCENES)}, got {part!r}")
    return rounds


@dataclass
class ReproduceArguments:
    """The whole testbed recipe, in stages that a rerun with the same --output resumes from the last finished one."""

    output: str = field(default="runs/testbed", metadata={"help": "Folder for everything the recipe writes."})
    vision_steps: int = field(
        default=100, metadata={"help": "Stage 1: steps of the vision tower on per-token labels (0: skip)."}
    )
    vlm_schedule: str = field(
        default="2000:2e-3:easy,2000:1e-3:full:8000,1000:1e-3:full:6000:1:0.5,1000:1e-3:full:6000:1:0.5",
        metadata={
            "help": "Stage 2 as rounds `steps:peak_lr[:scenes[:records[:count_weight[:drop]]]]`, comma-separated; "
            "each round is a cosine run (warm-up: a twentieth of its steps) that goes on from the previous one on "
            "records it has not seen (default --vlm_cached_records of them), drawn from the task's full distribution "
            "or its `easy` curriculum scenes (scenes.SCENES), with `RelevanceTrainer`'s count term at `count_weight` "
            "(default 0) and, in a `drop` share of its records (default 0), a random part of the visual tokens that "
            "the question is not about left out (`TokenDropout`). A finished run resumes with rounds appended to its "
            "schedule."
        },
    )
    vlm_batch_size: int = field(default=16, metadata={"help": "VLM training batch size."})
    vlm_caption_every: int = field(
        default=0,
        metadata={
            "help": "Every n-th VLM training record is a caption instead of a question (0: none; with the auxiliary "
            "losses below the captions only slowed v2 training down)."
        },
    )
    vlm_cached_records: int = field(
        default=16000,
        metadata={
            "help": "Stage 2 trains each round on this many fresh records whose visual tokens the frozen tower "
            "computes once, for as many epochs as the round's steps take."
        },
    )
    vlm_relevance_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of stage 2's auxiliary loss that teaches each visual token whether the question is "
            "about it (`RelevanceTrainer`; 0: answers only). v2 records only."
        },
    )
    vlm_gather_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of stage 2's auxiliary loss that points one attention head of the answering position at "
            "the relevant visual tokens (`RelevanceTrainer`; 0: none)."
        },
    )
    vlm_layers: int = field(
        default=TEXT_SIZES["num_hidden_layers"],
        metadata={
            "help": "Decoder layers of the VLM's language model (>= 2; runs/testbed-v2 and v3 have 4). Set when stage 1 "
            "creates the model; every later stage goes on from it."
        },
    )
    vlm_width: int = field(
        default=TEXT_SIZES["hidden_size"],
        metadata={
            "help": "Width of the VLM's language model (a multiple of 32: 32-wide heads, FFN 4x as wide; "
            "docs/testbed.md, 'The width'). Set when stage 1 creates the model."
        },
    )
    vlm_relevance_layer: int = field(
        default=3,
        metadata={
            "help": "Where stage 2's auxiliary losses act: the visual tokens' states after this many decoder layers "
            "say whether the question is about them, and the gather / count heads are those of the decoder layer of "
            "this index (1 to the LLM's layers - 1). In-LLM pruning (fastv, K = 2) reads the attention of layer K - 1."
        },
    )
    selector_records: int = field(default=2400, metadata={"help": "Train-split records written for the selectors."})
    selector_steps: int = field(default=600, metadata={"help": "Optimiser steps per selector."})
    selector_method_steps: str = field(
        default="visionselector=1500,questionselector=1000",
        metadata={
            "help": "Comma-separated method=steps: those selectors train for that many steps instead of "
            "--selector_steps (empty: none)."
        },
    )
    visionselector_lambda_end: float = field(
        default=2.0,
        metadata={
            "help": "visionselector's BCE constraint weight at the end of its linear ramp from lambda_start 0.1 "
            "(paper 000: 2.0; 0.1 holds it constant)."
        },
    )
    selector_batch_size: int = field(default=8, metadata={"help": "Selector training batch size."})
    train_budget: float = field(
        default=0.1, metadata={"help": "Budget the selectors other than visionselector are trained at."}
    )
    visionselector_train_budget: float = field(
        default=0.05,
        metadata={
            "help": "Budget visionselector is trained at (paper 000: 0.2; evaluated at 0.05-0.5). At 0.05 the "
            "clutter no longer fits in the budget beside the objects, so the scorer learns to rank it below them "
            "(docs/testbed.md)."
        },
    )
    eval_limit: int = field(default=500, metadata={"help": "Test examples of the v2 task for the eval table."})
    v1_eval_limit: int = field(
        default=200,
        metadata={
            "help": "Test examples of the v1 task for the eval table (the v2 VLM answers v1 near chance, so fewer "
            "examples say as much and keep the recipe under 3 hours)."
        },
    )
    eval_tasks: str = field(default="v2,v1", metadata={"help": "Tasks the eval table covers (v2: the training task)."})
    budgets: str = field(default="0.05,0.1,0.2,0.3,0.5", metadata={"help": "Budgets of the eval table."})
    seed: int = field(default=0, metadata={"help": "Seed of every stage."})
    threads: int = field(default=2, metadata={"help": "torch threads."})
    bundle: bool = field(
        default=False, metadata={"help": "Write the base and what training produced of each adapter to --bundle_dir."}
    )
    bundle_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder --bundle writes (default: the source checkout's examples/testbed/default_model; a folder "
            "in site-packages is refused)."
        },
    )


def vlm_round_arguments(args: ReproduceArguments, schedule_round: Round) -> dict:
    """The `train_vlm` keyword arguments of one round of `args.vlm_schedule` (a fresh VLM unless `init_from` is also
    given; its records start at 0 unless `first_record` is)."""
    return dict(
        steps=schedule_round.steps,
        batch_size=args.vlm_batch_size,
        learning_rate=schedule_round.learning_rate,
        seed=args.seed,
        caption_every=args.vlm_caption_every,
        cached_records=schedule_round.records,
        scene=schedule_round.scene,
        relevance_weight=args.vlm_relevance_weight,
        gather_weight=args.vlm_gather_weight,
        count_weight=schedule_round.count_weight,
        relevance_layer=args.vlm_relevance_layer,
        text_layers=args.vlm_layers,
        text_width=args.vlm_width,
        drop=schedule_round.drop,
    )


def train_vision_stage(output_dir: Path, args: ReproduceArguments):
    """Stage 1: a fresh testbed VLM whose vision tower learns per-token labels, its output rescaled to the word
    embeddings' norm (`match_feature_scale`); saves model + processor (+ the stage's log) to `output_dir`."""
    model, processor = new_testbed_model(args.seed, args.vlm_layers, args.vlm_width)
    log = pretrain_vision(model, processor, output_dir, args.vision_steps, args.vlm_batch_size, 2e-3, args.seed)
    match_feature_scale(model, processor)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "vision_log.json").write_text(json.dumps(log, indent=1) + "\n")
    shutil.rmtree(output_dir / "vision-trainer", ignore_errors=True)


def train_vlm(
    output_dir: Path,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    caption_every: int = 2,
    init_from: str | None = None,
    first_record: int = 0,
    cached_records: int = 16000,
    scene: str = "full",
    relevance_weight: float = 1.0,
    gather_weight: float = 0.0,
    count_weight: float = 0.0,
    relevance_layer: int = 2,
    text_layers: int | None = None,
    drop: float = 0.0,
    text_width: int | None = None,
):
    """Stage 2 round: the language model of the VLM in `init_from` (a fresh one of `text_layers` decoder layers if None)
    trained with the stock Trainer, its whole vision tower frozen, on `cached_records` train records from
    `first_record` whose visual tokens are computed once (`CachedVisualTokens`), for as many epochs as `steps` takes,
    a `drop` share of them thinned out by `TokenDropout`; saves model + processor."""
    if init_from is not None:
        from .model import load_testbed

        model, processor = load_testbed(init_from)
    else:
        model, processor = new_testbed_model(seed, text_layers, text_width)
    model.model.visual.requires_grad_(False)
    model.eval()  # the tower's pass (no dropout here either way), then the Trainer switches to train mode
    records = GeneratedRecords("train", cached_records, caption_every, first=first_record, scene=scene)
    dataset = CachedVisualTokens(model, processor, records)
    if drop > 0:
        collator = TokenDropout(model, processor.tokenizer.pad_token_id, drop, seed=seed + first_record)
    else:
        collator = functools.partial(collate_cached, pad_token_id=processor.tokenizer.pad_token_id)
    args = _training_arguments(output_dir / "trainer", steps, batch_size, learning_rate, seed, logs=60, num_workers=0)
    yes_no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    trainer = RelevanceTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        relevance_weight=relevance_weight,
        gather_weight=gather_weight,
        count_weight=count_weight,
        relevance_layer=relevance_layer,
        yes_no_ids=yes_no,
    )
    if (
        gather_weight > 0 or count_weight > 0
    ):  # the gather loss reads attention weights, which only eager attention returns
        model.set_attn_implementation("eager")
    trainer.train()
    model.set_attn_implementation("sdpa")
    model.eval()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
    shutil.rmtree(output_dir / "trainer", ignore_errors=True)
    return model, processor


def write_records(split: str, n: int, folder: Path, caption_every: int = 0) -> Path:
    """`n` examples of `split` as JPEG images + a records JSON (the format `hf-tokenprune train` reads).

    Every `caption_every`-th record (0: none, 1: all) is the image's caption (`caption_record`, kind "caption")
    instead of its question; the JSON is `<split>.json`, or `<split>-captions-<caption_every>.json` with captions.
    """
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for index, example in enumerate(GeneratedExamples(split, n)):  # one image in memory at a time
        name = f"{split}-{example.seed}.jpg"
        if not (images / name).is_file():
            example.image.save(images / name, quality=92)
        if caption_every and index % caption_every == 0:
            records.append({**conversation_record(name, CAPTION_PROMPT, caption_text(example)), "kind": "caption"})
        else:
            records.append({**conversation_record(name, example.question, example.answer), "kind": example.kind})
    path = folder / (f"{split}-captions-{caption_every}.json" if caption_every else f"{split}.json")
    path.write_text(json.dumps(records) + "\n")
    return path


# Papers 002 / 004 train autoselect on dense captions only; paper 000 trains visionselector on a mix of VQA and
# captioned (COCO) images. A one-word answer gives a question-blind selector contradictory gradients across
# questions about similar images; a caption needs every object. (reconstruction reads no text; questionselector
# conditions on the question, so it trains on questions.)
SELECTOR_CAPTION_EVERY = {"visionselector": 2, "questionselector": 0, "autoselect": 1, "reconstruction": 0}


def selector_caption_every(method: str, args: ReproduceArguments) -> int:
    """`SELECTOR_CAPTION_EVERY[method]` when the recipe's VLM was trained to caption (`vlm_caption_every` > 0), else 0.

    Why: a caption's loss means nothing to a VLM that never learned to caption. Measured on the v2 VLM (trained
    without captions), visionselector on half-caption records: task loss 10.4 (flat), gradient norm 6e-4.
    """
    return SELECTOR_CAPTION_EVERY[method] if args.vlm_caption_every > 0 else 0


def parse_method_steps(value: str) -> dict[str, int]:
    """`--selector_method_steps` "visionselector=3000,questionselector=1500" -> {method: steps}; raises naming it."""
    steps = {}
    for part in (part.strip() for part in value.split(",")):
        if not part:
            continue
        method, _, count = part.partition("=")
        if method.strip() not in BUNDLED_METHODS or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(
                f"`selector_method_steps` must be comma-separated method=steps with a method among {BUNDLED_METHODS} "
                f"and steps >= 1, got {part!r}"
            )
        steps[method.strip()] = int(count)
    return steps


def selector_steps(method: str, args: ReproduceArguments) -> int:
    """Optimiser steps of `method`'s selector: its `--selector_method_steps` entry, else `--selector_steps`."""
    return parse_method_steps(args.selector_method_steps).get(method, args.selector_steps)


#: `scorer_hidden_size` of each bundled adapter (visionselector: its default, half the LLM width).
TESTBED_SCORER_WIDTHS = {"autoselect": 128, "reconstruction": 128, "questionselector": 64}
#: `scorer_num_heads` of the bundled Transformer scorers (trained before the default became width // 128).
TESTBED_SCORER_HEADS = {"autoselect": 4, "reconstruction": 4}


def train_selector(
    method: str,
    base_dir: Path,
    records: Path,
    adapter: Path,
    args: ReproduceArguments,
    training_overrides: dict | None = None,
) -> Path:
    """Train one selector through the library's training entry point and save it as the adapter repo `adapter`
    (its training run goes to a `<adapter>-run` folder beside it).

    training_overrides: further `TokenPruneTrainingArguments` fields (e.g. `soft_mask_mode`).
    """
    run_dir = adapter.with_name(adapter.name.removesuffix(".partial") + "-run")
    from .model import load_testbed

    steps = selector_steps(method, args)

    model_args = TrainModelArguments(
        model_name_or_path=str(base_dir),
        method=method,
        budget=0.2,
        # Sizes as the bundled adapters were trained, whatever the methods' defaults and `--vlm_width`: the
        # Transformer scorers 128 wide with 4 heads, questionselector's d 64 (half the width of the 128-wide VLM it
        # was tuned on).
        scorer_hidden_size=TESTBED_SCORER_WIDTHS.get(method),
        scorer_num_heads=TESTBED_SCORER_HEADS.get(method),
    )
    data_args = TrainDataArguments(train_file=str(records), image_folder=str(records.parent / "images"))
    training_args = TokenPruneTrainingArguments(
        output_dir=str(run_dir),
        train_budget=args.visionselector_train_budget if method == "visionselector" else args.train_budget,
        max_steps=steps,
        per_device_train_batch_size=args.selector_batch_size,
        # visionselector: its bilinear scorer starts near zero (paper 000) and the testbed's features are short
        # (word-embedding norm), so at 3e-3 its soft mask stayed near uniform (polarisation 0.80 = every token at
        # 0.1). Measured on v2 at budget 0.1, 200 validation examples: 3e-3 x 600 steps 46% (test), 2e-2 x 300 steps
        # 76.5%, 91% of the objects kept; on 500 validation examples: 2e-2 x 1500 steps 93.2%, 5e-2 x 1500 steps
        # 94.2%, 2e-2 x 3000 steps 94.2%.
        # questionselector: visionselector's bilinear scorer plus a cross-attention term, same near-zero start;
        # 2e-2 x 600 steps: 94.8% at budget 0.1 on 500 validation examples.
        learning_rate={"visionselector": 5e-2, "questionselector": 2e-2, "autoselect": 1e-3, "reconstruction": 1e-3}[
            method
        ],
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        logging_steps=max(1, steps // 25),
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        **({"lambda_end": args.visionselector_lambda_end} if method == "visionselector" else {})
        | (training_overrides or {}),
    )
    run_train(model_args, data_args, training_args)
    base, _ = load_testbed(base_dir)
    pruned = get_pruned_model(base, run_dir)
    pruned.save_pretrained(adapter, base_model_name_or_path="../base")
    return adapter


class Stages:
    """Resumable stages of one `reproduce` run in `output`: a finished stage is recorded in `stages.json` (written
    atomically) with its time, and a rerun with the same arguments (or with rounds appended to `vlm_schedule`, see
    `_extend_schedule`) skips it.

    Why by hand: the Trainer resumes one training run from its checkpoints; the recipe is a chain of runs and evals
    whose unit of resumption is the stage. A stage writes its folder under a `.partial` name and renames it when it
    is done, so a stage cut off mid-way is never taken for a finished one: its leftovers are removed and it reruns.
    """

    # Arguments that change no stage's result: a resumed run may change them.
    FREE_ARGUMENTS = ("threads", "bundle", "bundle_dir")
    # Arguments that only later stages read, by the first stage kind (or the one stage) they change: a resumed run may
    # change them, and that kind of stage (or that stage) and every later kind (order: `STAGE_KINDS`) reruns. The
    # VLM's arguments are not among them: a finished VLM is only ever extended (`_extend_schedule`).
    STAGE_KINDS = ("vision", "vlm-round", "records", "selector", "eval")
    DOWNSTREAM_ARGUMENTS = {
        "selector_records": "records",
        "selector_steps": "selector",
        "selector_method_steps": "selector",
        "visionselector_lambda_end": "selector-visionselector",
        "visionselector_train_budget": "selector-visionselector",
        "selector_batch_size": "selector",
        "train_budget": "selector",
        "eval_limit": "eval",
        "v1_eval_limit": "eval",
        "eval_tasks": "eval",
        "budgets": "eval",
    }

    # What a run recorded before these arguments existed ran at; their defaults changed since (issue 16: the
    # default VLM became that of runs/testbed-v5, 5 layers grounding at layer 3).
    RECORDED_BEFORE = {"vlm_layers": 4, "vlm_relevance_layer": 2}

    def __init__(self, output: Path, args: ReproduceArguments) -> None:
        self.output = output
        self.path = output / "stages.json"
        arguments = {key: value for key, value in asdict(args).items() if key not in self.FREE_ARGUMENTS}
        arguments.pop("output")
        state = json.loads(self.path.read_text()) if self.path.is_file() else {"arguments": arguments, "done": {}}
        # A run recorded before an argument existed ran at the value it had then: its default, or for an argument
        # whose default changed later, the value of `RECORDED_BEFORE`.
        defaults = {item.name: item.default for item in fields(ReproduceArguments)} | self.RECORDED_BEFORE
        # visionselector trained at the run's `train_budget` before it had a budget of its own.
        defaults["visionselector_train_budget"] = state["arguments"].get("train_budget", defaults["train_budget"])
        changed = sorted(key for key in arguments if state["arguments"].get(key, defaults[key]) != arguments[key])
        downstream = [key for key in changed if key in self.DOWNSTREAM_ARGUMENTS]
        upstream = [key for key in changed if key not in downstream]
        if upstream == ["vlm_schedule"] and self._extend_schedule(state, arguments["vlm_schedule"]):
            upstream = []
        if upstream:
            raise ValueError(
                f"`output` {str(output)!r} holds a run with other arguments ({', '.join(upstream)}); resume it with "
                "the same ones (those of the records, selectors and evals may change) or choose a new --output"
            )
        if downstream:
            rerun = set()
            for key in downstream:
                stage = self.DOWNSTREAM_ARGUMENTS[key]
                kind = next(kind for kind in self.STAGE_KINDS if stage == kind or stage.startswith(kind + "-"))
                rerun.update([stage, *self.STAGE_KINDS[self.STAGE_KINDS.index(kind) + 1 :]])
            state["done"] = {
                name: seconds
                for name, seconds in state["done"].items()
                if not any(name == stage or name.startswith(stage + "-") for stage in rerun)
            }
            state["arguments"].update({key: arguments[key] for key in downstream})
            write_json_atomically(self.path, state)
        self.state = state

    def _extend_schedule(self, state: dict, schedule: str) -> bool:
        """When `schedule` is the run's `vlm_schedule` with rounds appended, make the run one of `schedule` and return
        True: the finished rounds stay, the last of them is moved from `base` to its round folder (the new last
        round writes `base`), and every stage that read the old `base` (selectors, evals) is dropped to rerun.

        Why: stage 2 can then go on from a finished run, as a longer schedule would have, without redoing the
        rounds it shares with it (the committed `runs/testbed-v2` took its last two rounds this way).
        """
        old, new = state["arguments"]["vlm_schedule"].split(","), schedule.split(",")
        if len(new) <= len(old) or new[: len(old)] != old:
            return False
        last = f"vlm-round-{len(old)}"
        if last in state["done"] and (self.output / "base").is_dir() and not (self.output / last).exists():
            (self.output / "base").rename(self.output / last)
        kept = {"vision", "records", *(f"vlm-round-{index + 1}" for index in range(len(old)))}
        state["done"] = {name: seconds for name, seconds in state["done"].items() if name in kept}
        state["arguments"]["vlm_schedule"] = schedule
        write_json_atomically(self.path, state)
        return True

    def done(self, name: str) -> bool:
        return name in self.state["done"]

    def run(self, name: str, function, folder: Path | None = None, rerun_if_missing: bool = False):
        """Run `function(target)` unless `name` is done; `target` is `folder`'s `.partial` twin, renamed on success.
        With `rerun_if_missing`, a done stage whose `folder` is gone runs again (for outputs not committed that the
        stage writes the same again, so a run resumed from a clone of the repository can go on)."""
        if self.done(name) and rerun_if_missing and folder is not None and not folder.exists():
            print(f"stage {name}: done in an earlier run, but {folder} is gone: running it again")
            del self.state["done"][name]
        if self.done(name):
            print(f"stage {name}: done in an earlier run ({self.state['done'][name]:.0f} s), skipped")
            return None
        partial = None if folder is None else folder.with_name(folder.name + ".partial")
        for stale in (partial, folder):
            if stale is not None and stale.exists():
                shutil.rmtree(stale)
        print(f"stage {name}: running")
        start = time.perf_counter()
        result = function(partial)
        if folder is not None:
            partial.rename(folder)
        self.state["done"][name] = time.perf_counter() - start
        write_json_atomically(self.path, self.state)
        return result

    def seconds(self) -> dict[str, float]:
        return dict(self.state["done"])


def write_json_atomically(path: Path, value) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    temporary.replace(path)


def run_reproduce(args: ReproduceArguments) -> dict:
    """The whole recipe in resumable stages (`Stages`); returns the v2 eval results. Stage times go to
    OUTPUT/timings.json; the table of both tasks to OUTPUT/eval_table.md."""
    from hf_tokenprune.evaluate import format_table

    from . import evaluate

    for name in ("vlm_relevance_weight", "vlm_gather_weight"):
        if not getattr(args, name) >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {getattr(args, name)}")
    if args.vlm_layers < 2:
        raise ValueError(f"`vlm_layers` must be >= 2, got {args.vlm_layers}")
    layers = args.vlm_layers
    check_text_width(args.vlm_width, "vlm_width")
    if not 1 <= args.vlm_relevance_layer <= layers - 1:
        raise ValueError(
            f"`vlm_relevance_layer` must be in [1, {layers - 1}] (`vlm_layers` - 1), got {args.vlm_relevance_layer}"
        )
    if args.vlm_cached_records < 1:
        raise ValueError(f"`vlm_cached_records` must be >= 1, got {args.vlm_cached_records}")
    rounds = parse_schedule(args.vlm_schedule, args.vlm_cached_records)  # before anything is written
    parse_method_steps(args.selector_method_steps)
    for name in ("train_budget", "visionselector_train_budget"):
        check_fraction(getattr(args, name), name)
    tasks_to_eval = [task.strip() for task in args.eval_tasks.split(",") if task.strip()]
    if not tasks_to_eval or any(task not in TASKS for task in tasks_to_eval):
        raise ValueError(f"`eval_tasks` must name tasks among {TASKS}, got {args.eval_tasks!r}")
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    stages = Stages(output, args)
    (output / "reproduce_args.json").write_text(json.dumps(asdict(args), indent=2) + "\n")

    previous = None
    if args.vision_steps:
        stages.run("vision", lambda target: train_vision_stage(target, args), output / "vlm-vision")
        previous = output / "vlm-vision"
    first_record = 0
    for index, schedule_round in enumerate(rounds):
        last = index == len(rounds) - 1
        folder = output / ("base" if last else f"vlm-round-{index + 1}")
        stages.run(
            f"vlm-round-{index + 1}",
            functools.partial(
                train_vlm,
                **vlm_round_arguments(args, schedule_round),
                init_from=None if previous is None else str(previous),
                first_record=first_record,
            ),
            folder,
        )
        previous, first_record = folder, first_record + schedule_round.records
    base_dir = output / "base"

    def write_all_records(target: Path) -> None:
        for every in sorted({selector_caption_every(method, args) for method in BUNDLED_METHODS}):
            write_records("train", args.selector_records, target, every)

    # The records are not committed (44 MB of JPEGs) and come out the same from the seed.
    stages.run("records", write_all_records, output / "selector_data", rerun_if_missing=True)
    adapters = {}
    for method in BUNDLED_METHODS:
        every = selector_caption_every(method, args)
        records = output / "selector_data" / (f"train-captions-{every}.json" if every else "train.json")
        stages.run(
            f"selector-{method}",
            lambda target, method=method, records=records: train_selector(method, base_dir, records, target, args),
            output / method,
        )
        adapters[method] = output / method

    results = {}
    for task in tasks_to_eval:
        name = "eval_results.json" if task == "v2" else f"eval_results_{task}.json"

        def run_task_eval(target, task=task, name=name):
            evaluated = evaluate.run_eval(
                evaluate.EvalArguments(
                    model=str(base_dir),
                    adapters=",".join(f"{method}={path}" for method, path in adapters.items()),
                    budgets=args.budgets,
                    limit=args.v1_eval_limit if task == "v1" else args.eval_limit,
                    seed=args.seed,
                    task=task,
                    output=str(output / name),
                )
            )
            (output / name.replace(".json", "_table.md")).write_text(format_table(evaluated) + "\n")

        stages.run(f"eval-{task}", run_task_eval)
        results[task] = json.loads((output / name).read_text())
    for adapter in adapters.values():  # the adapters' model cards show the v2 table
        if (output / "eval_results.json").is_file():
            shutil.copy(output / "eval_results.json", adapter / "eval_results.json")
        write_model_card(adapter)
    timings = {**{f"{name}_seconds": seconds for name, seconds in stages.seconds().items()}, "threads": args.threads}
    timings["total_seconds"] = sum(stages.seconds().values())
    (output / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    if args.bundle:
        from .bundled import bundle

        bundle(output, adapters, args.bundle_dir)
    return results.get("v2", next(iter(results.values()), {}))
