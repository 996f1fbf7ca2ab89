"""Accuracy of a VLM on (image, question, answer) examples, unpruned and pruned by each method at each budget.

Accuracy is the exact match of the first generated word with the example's one-word answer (per kind too, where the
examples have a `kind`); retention is a pruned accuracy as a fraction of the unpruned one; kept tokens are the visual
tokens the pruned model kept, averaged over images. The JSON written is what the model card of a pushed repo reads
(`modeling.repo_io.check_eval_results`). A command that evaluates on its own data (`hf-tokenprune eval` on the synthetic task)
draws its examples and calls `check_eval_options`, `evaluate` and `write_outputs`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import BatchFeature
from transformers.utils import cached_file

from .hub import is_hub_id
from .model import get_pruned_model
from .modeling.configuration_token_prune import AUTO, CONFIG_NAME, AutoBudget, TokenPruneConfig, check_budget
from .modeling.repo_io import EXTRA_FILES, SELECTOR_WEIGHTS_NAME, check_eval_results, replace_atomically, write_json
from .modeling.token_selectors import available_selectors, get_selector_class

DEFAULT_BUDGETS = "0.1,0.2,0.3,0.5"
SCHEMA_FIELDS = ("unpruned_accuracy", "results")
_INTEGER = re.compile(r"[+-]?\d+")


# --------------------------------------------------------------------------------------------- validation
def _split_list(value: str, name: str) -> list[str]:
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ValueError(f"`{name}` is empty; give a comma-separated list")
    return items


def parse_budgets(
    value: str | Sequence[float | int | AutoBudget], name: str = "budgets"
) -> list[float | int | AutoBudget]:
    """Budgets from "0.1,0.2,16,auto,auto:0.8" (or a list): floats are fractions, integers token counts, "auto..." an
    `AutoBudget` (the selector chooses per image); duplicates dropped."""
    items = _split_list(value, name) if isinstance(value, str) else list(value)
    if not items:
        raise ValueError(f"`{name}` is empty; give at least one budget")
    budgets = []
    for item in items:
        if isinstance(item, str) and item.split(":")[0] != AUTO:
            try:
                item = int(item) if _INTEGER.fullmatch(item) else float(item)
            except ValueError:
                raise ValueError(
                    f"`{name}`: {item!r} is not a number; a budget is a float in (0, 1], an int >= 1 or "
                    "'auto[:THRESHOLD[:MIN_FRACTION[:MAX_FRACTION]]]'"
                ) from None
        budgets.append(check_budget(item, name))
    return list(dict.fromkeys(budgets))


def format_budget(budget: float | int | str | AutoBudget) -> str:
    """A budget as the tables and progress bar show it: numbers with `:g`, an adaptive budget as its string."""
    return str(budget) if isinstance(budget, (str, AutoBudget)) else f"{budget:g}"


def check_methods(methods: str | Sequence[str], name: str = "methods") -> list[str]:
    """Registered selector names, in order, duplicates dropped; an unknown one is refused listing the known ones."""
    names = _split_list(methods, name) if isinstance(methods, str) else list(methods)
    if not names:
        raise ValueError(f"`{name}` is empty; give at least one method")
    known = available_selectors()
    for method in names:
        if method not in known:
            raise ValueError(f"`{name}`: unknown method {method!r}; registered selectors: {known}")
    return list(dict.fromkeys(names))


def parse_adapters(value: str, name: str = "adapters") -> dict[str, str]:
    """{method: folder or repo id} from "visionselector=dir,autoselect=user/repo"; "" means none."""
    adapters: dict[str, str] = {}
    for item in [item.strip() for item in value.split(",") if item.strip()]:
        method, equals, source = (part.strip() for part in item.partition("="))
        if not equals or not method or not source:
            raise ValueError(f"`{name}`: {item!r} is not method=folder_or_repo_id")
        if method in adapters:
            raise ValueError(f"`{name}`: method {method!r} is given twice")
        adapters[method] = source
    if adapters:
        check_methods(list(adapters), name)
    return adapters


def resolve_adapter(method: str, source: str | os.PathLike, name: str = "adapters") -> Path:
    """Local folder holding `method`'s adapter files: `source` itself, or the Hub cache snapshot of repo `source`.

    Only the small adapter files are fetched (config, selector weights, eval results / training recipe); the
    adapter's `method` must be `method`.
    """
    path = Path(source)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(f"`{name}`: {method}={str(source)!r} has no {CONFIG_NAME} (not a selector adapter)")
    elif path.exists():
        raise ValueError(f"`{name}`: {method}={str(source)!r} is a file; give an adapter folder or a Hub repo id")
    elif isinstance(source, str) and is_hub_id(source):
        try:
            config_file = cached_file(source, CONFIG_NAME, _raise_exceptions_for_missing_entries=False)
            if config_file is None:
                raise ValueError(
                    f"`{name}`: Hub repo {method}={source!r} was not found or has no {CONFIG_NAME} (not a selector adapter)"
                )
            for optional in (SELECTOR_WEIGHTS_NAME, *EXTRA_FILES):
                cached_file(source, optional, _raise_exceptions_for_missing_entries=False)
        except OSError as error:
            raise OSError(f"`{name}`: cannot fetch {method}={source!r} from the Hub: {error}") from error
        path = Path(config_file).parent
    else:
        raise ValueError(f"`{name}`: {method}={str(source)!r} is neither an existing folder nor a Hub repo id")
    config = TokenPruneConfig.from_pretrained(path)
    if config.method != method:
        raise ValueError(f"`{name}`: {method}={str(source)!r} holds a {config.method!r} selector, not {method!r}")
    return path


def default_methods(adapters: Mapping[str, Any]) -> list[str]:
    """Every learned method that has an adapter, then every registered training-free method."""
    learned = [method for method in adapters if get_selector_class(method).trainable]
    training_free = [method for method in available_selectors() if not get_selector_class(method).trainable]
    return learned + training_free


def check_methods_have_adapters(methods: Sequence[str], adapters: Mapping[str, Any], name: str = "adapters") -> None:
    missing = [method for method in methods if get_selector_class(method).trainable and method not in adapters]
    if missing:
        raise ValueError(
            f"`{name}`: learned method(s) {missing} need a trained selector; give method=folder_or_repo_id "
            f"(adapters given: {sorted(adapters)})"
        )


def check_eval_options(
    model: str,
    adapters: str | None,
    methods: str | None,
    budgets: str,
    batch_size: int,
    threads: int | None,
    output: str | os.PathLike,
    default_adapters: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Validate an eval command's flags before any model is loaded; returns the parsed values.

    `model` is a saved folder or a Hub id; `adapters` is "method=folder_or_repo_id,..." ("" means none, None means
    `default_adapters`); `methods` None means `default_methods`. Returns {"methods", "adapters" (resolved to local
    folders, fetched only for the evaluated methods), "budgets", "output", "plot"}.
    """
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"`--model` {model!r} must be a saved model folder (with config.json)")
    elif not is_hub_id(model):
        raise ValueError(f"`--model` {model!r} is neither an existing folder nor a Hub repo id")
    if adapters is not None:
        sources = parse_adapters(adapters, "--adapters")
    else:
        sources = {method: str(source) for method, source in (default_adapters or {}).items()}
    methods = check_methods(methods, "--methods") if methods is not None else default_methods(sources)
    check_methods_have_adapters(methods, sources, "--adapters")
    budgets = parse_budgets(budgets, "--budgets")
    if batch_size < 1:
        raise ValueError(f"`--batch-size` must be >= 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise ValueError(f"`--threads` must be >= 1 (or left out), got {threads}")
    output_path = Path(output)
    plot = output_path.with_suffix(".png")
    if output_path == plot:
        raise ValueError(f"`--output` {str(output)!r} is where the plot goes; give a .json file")
    for written in (output_path, plot):
        if written.is_dir():
            raise ValueError(f"`--output`: {str(written)!r} is a directory")
    # Only the adapters of evaluated methods are fetched; an adapter of a method left out is not used.
    resolved = {
        method: resolve_adapter(method, sources[method], "--adapters") for method in methods if method in sources
    }
    return {"methods": methods, "adapters": resolved, "budgets": budgets, "output": output_path, "plot": plot}


# --------------------------------------------------------------------------------------------- evaluation
def image_then_question(question: str) -> list[dict[str, Any]]:
    """Chat messages of a VQA prompt: the image, then the question, from the user."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def build_batch(
    processor,
    images: Sequence[Any],
    questions: Sequence[str],
    messages_for: Callable[[str], list[dict[str, Any]]] = image_then_question,
) -> BatchFeature:
    """Model inputs for (image, question) prompts, each rendered by the processor's chat template from
    `messages_for(question)` and ending in the assistant's turn (padded as the tokenizer pads)."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    texts = [
        processor.apply_chat_template(messages_for(question), tokenize=False, add_generation_prompt=True)
        for question in questions
    ]
    # Images per sample: every processor takes that form, and some (Gemma 3's) take no other.
    return processor(text=texts, images=[[image] for image in images], return_tensors="pt", padding=True)


def first_word(text: str) -> str:
    """The answer a generation gives: its first word (answers are one word)."""
    words = text.split()
    return words[0] if words else ""


@torch.no_grad()
def predict(
    model,
    processor,
    images: Sequence[Any],
    questions: Sequence[str],
    batch_size: int = 32,
    progress: Callable[[int], Any] | None = None,
    messages_for: Callable[[str], list[dict[str, Any]]] = image_then_question,
    keep_masks: list[torch.Tensor] | None = None,
    **generate_kwargs,
):
    """Greedy one-word answers of `model` (stock or pruned) to (image, question) pairs, in batches.

    Returns (answers, kept_visual_tokens, total_visual_tokens) per example: the kept counts come from the pruned
    model's `keep_mask` (all visual tokens when the model does not prune). `generate_kwargs` go to `generate`, e.g.
    `prune_budget=0.1, prune_method="divprune"`. `progress`, when given, is called with each batch's size.
    `keep_masks`, when given, receives each example's (N,) bool keep mask over its visual tokens, in order.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    image_token_id = model.config.image_token_id
    answers, kept, total = [], [], []
    for start in range(0, len(questions), batch_size):
        batch = build_batch(
            processor, images[start : start + batch_size], questions[start : start + batch_size], messages_for
        )
        batch = batch.to(model.device)
        output = model.generate(
            **batch, max_new_tokens=2, do_sample=False, return_dict_in_generate=True, **generate_kwargs
        )
        prompt_length = batch["input_ids"].shape[1]
        texts = processor.batch_decode(output.sequences[:, prompt_length:], skip_special_tokens=True)
        answers += [first_word(text) for text in texts]
        visual = batch["input_ids"] == image_token_id
        keep_mask = output.get("keep_mask") if hasattr(output, "get") else None
        keep_mask = keep_mask if keep_mask is not None else torch.ones_like(visual)
        kept += (keep_mask & visual).sum(dim=1).tolist()
        if keep_masks is not None:
            keep_masks += [row_keep[row_visual].cpu() for row_keep, row_visual in zip(keep_mask, visual, strict=True)]
        total += visual.sum(dim=1).tolist()
        if progress is not None:
            progress(len(texts))
    return answers, kept, total


def _kinds(examples: Sequence[Any]) -> list[str]:
    """Kinds of `examples` (their `kind`, where they have one), in order of first appearance."""
    return list(dict.fromkeys(kind for kind in (getattr(example, "kind", None) for example in examples) if kind))


def _accuracies(
    answers: Sequence[str], examples: Sequence[Any], kinds: Sequence[str]
) -> tuple[float, dict[str, float]]:
    correct = [answer == example.answer for answer, example in zip(answers, examples, strict=True)]
    by_kind = {}
    for kind in kinds:
        hits = [hit for hit, example in zip(correct, examples, strict=True) if getattr(example, "kind", None) == kind]
        by_kind[kind] = sum(hits) / len(hits)
    return sum(correct) / len(correct), by_kind


def evaluate(
    base,
    processor,
    examples: Sequence[Any],
    methods: Sequence[str],
    budgets: Sequence[float | int],
    adapters: Mapping[str, str | os.PathLike] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    messages_for: Callable[[str], list[dict[str, Any]]] = image_then_question,
    evidence_of: Callable[[Any], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Accuracy of `base` (a stock VLM) unpruned and pruned by each method at each budget.

    `examples` have `.image`, `.question`, `.answer` and optionally `.kind` (a string); `messages_for(question)` lays
    out the prompt (see `build_batch`); `adapters` maps a method to a folder of its trained
    selector (needed for learned methods; a training-free method with an adapter uses the adapter's config).
    Returns {"unpruned_accuracy", "results": [{"method", "budget", "accuracy", "retention", "kept_tokens"}, ...]}
    (the JSON schema of `check_eval_results`; `eval_results_json` keeps just that) plus "unpruned_kind_accuracy"
    ({kind: accuracy}), "kind_accuracy" (one {kind: accuracy} per row of "results") and "visual_tokens" (mean per
    image). Accuracies and retention are fractions. Raises when the unpruned accuracy is 0 (retention undefined).

    `evidence_of(example)`, when given, is a (N,) bool mask of the visual tokens that hold the answer's evidence;
    the results also hold "evidence_recall", one per row of "results": the mean over examples of the share of
    evidence tokens kept (a selection-quality probe that needs no LLM answer, in the spirit of paper 004 Sec. 4.3).
    """
    from tqdm.auto import tqdm

    adapters = dict(adapters or {})
    methods = check_methods(methods)
    budgets = parse_budgets(budgets)
    if adapters:
        check_methods(list(adapters), "adapters")
    check_methods_have_adapters(methods, adapters)
    if not examples:
        raise ValueError("`examples` is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
    images = [example.image for example in examples]
    questions = [example.question for example in examples]
    kinds = _kinds(examples)

    bar = tqdm(
        total=(1 + len(methods) * len(budgets)) * len(examples), desc="eval", unit="example", disable=not progress
    )

    def run(model, **generate_kwargs):
        torch.manual_seed(seed)  # each configuration starts from the same state, whatever ran before it
        generate_kwargs["keep_masks"] = masks = [] if evidence_of is not None else None
        answers, kept, total = predict(
            model,
            processor,
            images,
            questions,
            batch_size=batch_size,
            progress=bar.update,
            messages_for=messages_for,
            **generate_kwargs,
        )
        recall = None
        if masks is not None:
            recall = sum(evidence_recall(mask, evidence_of(ex)) for mask, ex in zip(masks, examples, strict=True))
            recall /= len(examples)
        return answers, sum(kept) / len(kept), sum(total) / len(total), recall

    was_training = base.training
    base.eval()  # restored below: the caller's model is left as it came
    try:
        bar.set_postfix_str("unpruned")
        answers, _, total_tokens, _ = run(base)
        unpruned_accuracy, unpruned_by_kind = _accuracies(answers, examples, kinds)
        if unpruned_accuracy == 0:
            raise ValueError(
                f"the unpruned model answers none of the {len(examples)} examples correctly, so retention (pruned "
                "accuracy / unpruned accuracy) is undefined; evaluate a trained model"
            )
        rows, rows_by_kind, recalls = [], [], []
        for method in methods:
            config = adapters[method] if method in adapters else TokenPruneConfig(method=method, seed=seed)
            pruned = get_pruned_model(base, config).eval()
            for budget in budgets:
                bar.set_postfix_str(f"{method} @ {format_budget(budget)}")
                answers, kept_tokens, _, recall = run(pruned, prune_budget=budget)
                accuracy, by_kind = _accuracies(answers, examples, kinds)
                rows.append(
                    {
                        "method": method,
                        "budget": str(budget) if isinstance(budget, AutoBudget) else budget,
                        "accuracy": accuracy,
                        "retention": accuracy / unpruned_accuracy,
                        "kept_tokens": kept_tokens,
                    }
                )
                recalls.append(recall)
                rows_by_kind.append(by_kind)
            del pruned
    finally:
        bar.close()
        base.train(was_training)
    return {
        "unpruned_accuracy": unpruned_accuracy,
        "results": rows,
        "unpruned_kind_accuracy": unpruned_by_kind,
        "kind_accuracy": rows_by_kind,
        "visual_tokens": total_tokens,
        **({"evidence_recall": recalls} if evidence_of is not None else {}),
    }


# --------------------------------------------------------------------------------------------- outputs
def eval_results_json(results: Mapping[str, Any], name: str = "eval results") -> dict[str, Any]:
    """The part of `evaluate`'s results that the JSON file holds, validated with `check_eval_results`."""
    return check_eval_results({key: results[key] for key in SCHEMA_FIELDS}, name)


def evidence_recall(keep_mask: torch.Tensor, evidence: torch.Tensor) -> float:
    """Share of the evidence tokens kept: keep_mask, evidence: (N,) bool over one example's visual tokens."""
    evidence = torch.as_tensor(evidence, dtype=torch.bool)
    if evidence.shape != keep_mask.shape:
        raise ValueError(f"evidence mask of {tuple(evidence.shape)} for {tuple(keep_mask.shape)} visual tokens")
    return float(keep_mask[evidence].float().mean()) if evidence.any() else 1.0


def format_table(results: Mapping[str, Any]) -> str:
    """Markdown table: method, budget, accuracy %, retention %, mean kept visual tokens, then accuracy % per kind.

    The per-kind columns and the unpruned token count appear when `results` comes from `evaluate` (a JSON file
    read back holds neither).
    """
    rows = results["results"]
    unpruned_by_kind = results.get("unpruned_kind_accuracy", {})
    kinds = list(unpruned_by_kind)
    kind_rows = [unpruned_by_kind, *results.get("kind_accuracy", [{}] * len(rows))]
    header = ["method", "budget", "accuracy %", "retention %", "kept tokens", *(f"{kind} %" for kind in kinds)]
    recalls = results.get("evidence_recall")
    header += ["evidence recall %"] if recalls is not None else []
    visual_tokens = results.get("visual_tokens")
    table = [
        [
            "unpruned",
            "-",
            f"{100 * results['unpruned_accuracy']:.1f}",
            "100.0",
            "-" if visual_tokens is None else f"{visual_tokens:.1f}",
        ]
    ]
    table += [
        [
            row["method"],
            format_budget(row["budget"]),
            f"{100 * row['accuracy']:.1f}",
            f"{100 * row['retention']:.1f}",
            f"{row['kept_tokens']:.1f}",
        ]
        for row in rows
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for cells, by_kind, recall in zip(table, kind_rows, [None, *(recalls or rows)], strict=True):
        cells += [f"{100 * by_kind[kind]:.1f}" if kind in by_kind else "-" for kind in kinds]
        if recalls is not None:
            cells.append("-" if recall is None else f"{100 * recall:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_retention(results: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Retention (% of unpruned accuracy) against budget, one line per method, unpruned as the 100% line.

    With "auto" rows (adaptive budgets, which have no place on the budget axis) a second panel plots every row's
    retention against its mean kept visual tokens: fixed budgets as lines per method, adaptive ones as stars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["results"]
    fixed = [row for row in rows if not isinstance(row["budget"], str)]
    adaptive = [row for row in rows if isinstance(row["budget"], str)]
    figure, panels = plt.subplots(1, 2 if adaptive else 1, figsize=(13 if adaptive else 7, 4.5), squeeze=False)
    axes = panels[0, 0]
    colours = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        points = sorted((row["budget"], 100 * row["retention"]) for row in fixed if row["method"] == method)
        if points:
            (line,) = axes.plot(*zip(*points, strict=True), marker="o", label=method)
            colours[method] = line.get_color()
    axes.axhline(100, color="black", linestyle="--", linewidth=1.5, label="unpruned")
    fractions = all(isinstance(row["budget"], float) for row in fixed)
    axes.set(
        xlabel="budget (fraction of visual tokens kept)" if fractions else "budget",
        ylabel="retention (% of unpruned accuracy)",
        title=f"accuracy retained after pruning (unpruned accuracy {100 * results['unpruned_accuracy']:.1f}%)",
    )
    axes.set_xticks(sorted({row["budget"] for row in fixed}))
    top = max(105, 5 + max(100 * row["retention"] for row in rows))
    if adaptive:
        kept_axes = panels[0, 1]
        for method in dict.fromkeys(row["method"] for row in rows):
            points = sorted((row["kept_tokens"], 100 * row["retention"]) for row in fixed if row["method"] == method)
            if points:
                kept_axes.plot(*zip(*points, strict=True), marker="o", color=colours[method], label=method)
            for row in (row for row in adaptive if row["method"] == method):
                kept_axes.plot(
                    row["kept_tokens"],
                    100 * row["retention"],
                    marker="*",
                    markersize=13,
                    linestyle="none",
                    color=colours.get(method, "black"),
                )
                kept_axes.annotate(
                    row["budget"],
                    (row["kept_tokens"], 100 * row["retention"]),
                    fontsize=7,
                    xytext=(4, -10),
                    textcoords="offset points",
                )
        kept_axes.axhline(100, color="black", linestyle="--", linewidth=1.5)
        kept_axes.set(
            xlabel="mean kept visual tokens per image",
            ylabel="retention (% of unpruned accuracy)",
            title="fixed budgets (lines) and adaptive 'auto' budgets (stars)",
        )
        kept_axes.set_ylim(0, top)
        kept_axes.grid(alpha=0.3)
    axes.set_ylim(0, top)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    try:
        replace_atomically(Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=110))
    finally:
        plt.close(figure)


def write_outputs(results: Mapping[str, Any], output: str | os.PathLike) -> tuple[Path, Path]:
    """Validate, then write the JSON (`output`) and the retention plot (`output` with .png), each atomically."""
    output = Path(output)
    plot = output.with_suffix(".png")
    data = eval_results_json(results, str(output))
    replace_atomically(output, lambda temporary: write_json(data, temporary))
    plot_retention(data, plot)
    return output, plot


__all__ = [
    "DEFAULT_BUDGETS",
    "build_batch",
    "check_eval_options",
    "evaluate",
    "first_word",
    "format_budget",
    "format_table",
    "image_then_question",
    "plot_retention",
    "predict",
    "write_outputs",
]
