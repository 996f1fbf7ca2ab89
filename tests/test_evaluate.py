"""`hf-tokenprune eval` and `evaluate`: accuracies against hand loops over `predict`, kept tokens against the budget
contract, the JSON against `check_eval_results`, the plot as a PNG, and every bad flag refused before a model loads.

The testbed VLM here has random weights, so its answers are arbitrary; the examples' answers are set from its own
unpruned predictions (half of them) so the unpruned accuracy is a known 0.5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import huggingface_hub.constants
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

import hf_tokenprune.evaluate as evaluate_module
import hf_tokenprune_testbed.evaluate as testbed_eval
import hf_tokenprune_testbed.model as testbed_model
from hf_tokenprune import AutoBudget, TokenPruneConfig, get_pruned_model
from hf_tokenprune.cli import main
from hf_tokenprune.evaluate import eval_results_json, format_table, resolve_adapter, write_outputs
from hf_tokenprune.modeling.pruning import tokens_to_keep
from hf_tokenprune.modeling.repo_io import check_eval_results
from hf_tokenprune.modeling.token_selectors import available_selectors, get_selector_class
from hf_tokenprune.testing import place_in_hf_cache
from hf_tokenprune_testbed import tasks
from hf_tokenprune_testbed.evaluate import EvalArguments, check_eval_arguments, evaluate
from hf_tokenprune_testbed.model import new_testbed_model, predict

BATCH = 3
SEED = 3
WRONG = "none-of-these"  # not a vocabulary word: the model can never answer it


@dataclass
class Example:
    image: Image.Image
    question: str
    answer: str
    kind: str


@pytest.fixture(scope="module")
def testbed():
    """(random-weight testbed model, processor, 6 examples with unpruned accuracy 0.5, visual tokens per image)."""
    base, processor = new_testbed_model(seed=0)
    base.eval()
    drawn = [tasks.make_example(100 + i, kind=tasks.KINDS[i % len(tasks.KINDS)]) for i in range(6)]
    answers, _, total = predict(base, processor, [e.image for e in drawn], [e.question for e in drawn], BATCH)
    examples = [
        Example(e.image, e.question, answer if i % 2 == 0 else WRONG, e.kind)
        for i, (e, answer) in enumerate(zip(drawn, answers, strict=True))
    ]
    return base, processor, examples, total


@pytest.fixture(scope="module")
def results(testbed):
    base, processor, examples, _ = testbed
    return evaluate(
        base, processor, examples, ["random", "uniform"], [0.2, 1.0, 7], batch_size=BATCH, seed=SEED, progress=False
    )


def hand_accuracy(answers, examples, kind=None):
    pairs = [(a, e.answer) for a, e in zip(answers, examples, strict=True) if kind is None or e.kind == kind]
    return sum(a == b for a, b in pairs) / len(pairs)


def test_unpruned_accuracy_and_per_kind(testbed, results):
    _, _, examples, total = testbed
    assert results["unpruned_accuracy"] == 0.5
    # kinds 0..4 then attribute again; even indices are right: attribute 1 of 2, count and reading right
    assert results["unpruned_kind_accuracy"] == {
        "attribute": 0.5,
        "identity": 0.0,
        "count": 1.0,
        "existence": 0.0,
        "reading": 1.0,
    }
    assert results["visual_tokens"] == sum(total) / len(total)


def test_rows_match_a_hand_loop_over_predict(testbed, results):
    base, processor, examples, total = testbed
    images, questions = [e.image for e in examples], [e.question for e in examples]
    expected = []
    for method in ("random", "uniform"):
        pruned = get_pruned_model(base, TokenPruneConfig(method=method, seed=SEED))
        for budget in (0.2, 1.0, 7):
            answers, kept, _ = predict(pruned, processor, images, questions, BATCH, prune_budget=budget)
            assert kept == [tokens_to_keep(budget, n) for n in total]  # the budget contract, per image
            accuracy = hand_accuracy(answers, examples)
            expected.append(
                {
                    "method": method,
                    "budget": budget,
                    "accuracy": accuracy,
                    "retention": accuracy / 0.5,
                    "kept_tokens": sum(tokens_to_keep(budget, n) for n in total) / len(total),
                }
            )
            by_kind = {kind: hand_accuracy(answers, examples, kind) for kind in results["unpruned_kind_accuracy"]}
            assert results["kind_accuracy"][len(expected) - 1] == by_kind
    assert results["results"] == expected
    assert type(base) is Qwen2_5_VLForConditionalGeneration and not hasattr(base, "token_prune_config")


def test_budget_one_keeps_everything_and_retains_all(testbed, results):
    _, _, _, total = testbed
    for row in (row for row in results["results"] if row["budget"] == 1.0):
        assert row["accuracy"] == results["unpruned_accuracy"]
        assert row["retention"] == 1.0
        assert row["kept_tokens"] == sum(total) / len(total)


def saved_random_adapter(base, method: str, seed: int, folder):
    """`method` attached to `base` with N(0, 1) scorer weights (decisive scores), saved as an adapter in `folder`."""
    trained = get_pruned_model(base, TokenPruneConfig(method=method))
    torch.manual_seed(seed)
    with torch.no_grad():
        for tensor in trained.token_selector.parameters():
            tensor.normal_()
    trained.save_pretrained(folder, base_model_name_or_path="org/testbed")
    return trained


def test_learned_method_uses_the_adapter_weights(testbed, tmp_path, monkeypatch):
    base, processor, examples, total = testbed
    trained = saved_random_adapter(base, "visionselector", 1, tmp_path / "visionselector")
    used = []

    def spy(*arguments):
        used.append(get_pruned_model(*arguments))
        return used[-1]

    monkeypatch.setattr(evaluate_module, "get_pruned_model", spy)
    out = evaluate(
        base,
        processor,
        examples,
        ["visionselector"],
        [0.3],
        {"visionselector": tmp_path / "visionselector"},
        batch_size=BATCH,
        progress=False,
    )
    saved = trained.token_selector.state_dict()
    loaded = used[0].token_selector.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    answers, kept, _ = predict(
        trained, processor, [e.image for e in examples], [e.question for e in examples], BATCH, prune_budget=0.3
    )
    accuracy = hand_accuracy(answers, examples)
    assert out["results"] == [
        {
            "method": "visionselector",
            "budget": 0.3,
            "accuracy": accuracy,
            "retention": accuracy / 0.5,
            "kept_tokens": sum(kept) / len(kept),
        }
    ]


def test_auto_budgets_are_evaluated_written_and_plotted(testbed, tmp_path):
    """An "auto" row is what `predict` gives with that `AutoBudget`; it is written as its string, read back by the
    JSON schema, shown in the table, and plotted against kept tokens beside the fixed budgets."""
    base, processor, examples, _ = testbed
    trained = saved_random_adapter(base, "questionselector", 2, tmp_path / "questionselector")
    budgets = [0.2, "auto:0.5", AutoBudget(threshold=0.9, min_fraction=0.2)]
    out = evaluate(
        base,
        processor,
        examples,
        ["questionselector"],
        budgets,
        {"questionselector": tmp_path / "questionselector"},
        batch_size=BATCH,
        progress=False,
    )
    assert [row["budget"] for row in out["results"]] == [0.2, "auto:0.5", "auto:0.9:0.2"]
    images, questions = [e.image for e in examples], [e.question for e in examples]
    for row, budget in zip(out["results"][1:], (AutoBudget(0.5), AutoBudget(0.9, 0.2)), strict=True):
        answers, kept, _ = predict(trained, processor, images, questions, BATCH, prune_budget=budget)
        assert row["kept_tokens"] == sum(kept) / len(kept) and row["accuracy"] == hand_accuracy(answers, examples)
    json_path, png_path = write_outputs(out, tmp_path / "auto.json")
    data = json.loads(json_path.read_text())
    assert check_eval_results(data, "auto.json") == data and data["results"][1]["budget"] == "auto:0.5"
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side
    assert "| questionselector | auto:0.9:0.2 |" in format_table(out)
    with pytest.raises(ValueError, match="budgets.*auto"):
        evaluate(base, processor, examples, ["questionselector"], ["autox"], progress=False)


def test_zero_unpruned_accuracy_is_refused_before_pruning(testbed, monkeypatch):
    base, processor, examples, _ = testbed
    wrong = [Example(e.image, e.question, WRONG, e.kind) for e in examples[:2]]
    monkeypatch.setattr(evaluate_module, "get_pruned_model", lambda *a: pytest.fail("pruned after a 0 accuracy"))
    modes = []

    def spy(model, *arguments, **kwargs):
        modes.append(model.training)
        return predict(model, *arguments, **kwargs)

    monkeypatch.setattr(evaluate_module, "predict", spy)
    base.train()
    try:
        with pytest.raises(ValueError, match="unpruned model answers none"):
            evaluate(base, processor, wrong, ["uniform"], [0.5], progress=False)
        assert modes == [False]  # predicted in eval mode ...
        assert base.training  # ... and the model given back as it came
    finally:
        base.eval()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(methods=["nope"]), r"`methods`: unknown method 'nope'; registered selectors: \["),
        (dict(methods=["visionselector"]), r"`adapters`: learned method\(s\) \['visionselector'\]"),
        (dict(budgets=[0.0]), "`budgets`"),
        (dict(budgets=[1.5]), "`budgets`"),
        (dict(adapters={"nope": "dir"}), "`adapters`: unknown method"),
        (dict(examples=[]), "`examples`"),
        (dict(batch_size=0), "`batch_size`"),
    ],
)
def test_evaluate_refuses_bad_input_before_compute(testbed, monkeypatch, kwargs, match):
    base, processor, examples, _ = testbed
    monkeypatch.setattr(evaluate_module, "predict", lambda *a, **k: pytest.fail("computed before validating"))
    arguments = dict(examples=examples, methods=["uniform"], budgets=[0.5], adapters=None, batch_size=2) | kwargs
    with pytest.raises(ValueError, match=match):
        evaluate(base, processor, progress=False, **arguments)


def test_json_round_trips_and_plot_is_a_png(results, tmp_path):
    json_path, png_path = write_outputs(results, tmp_path / "out" / "eval.json")
    assert (json_path, png_path) == (tmp_path / "out" / "eval.json", tmp_path / "out" / "eval.png")
    data = json.loads(json_path.read_text())
    assert data == {"unpruned_accuracy": results["unpruned_accuracy"], "results": results["results"]}
    assert check_eval_results(data, "eval.json") == data
    assert isinstance(data["results"][-1]["budget"], int)  # a token-count budget stays an int
    with Image.open(png_path) as image:
        assert image.format == "PNG" and min(image.size) > 100
    assert sorted(path.name for path in json_path.parent.iterdir()) == ["eval.json", "eval.png"]  # no partial files


def test_invalid_results_are_not_written(results, tmp_path):
    broken = dict(results, results=[dict(results["results"][0], retention=95.0)])  # a percentage, not a fraction
    with pytest.raises(ValueError, match="retention"):
        write_outputs(broken, tmp_path / "eval.json")
    assert list(tmp_path.iterdir()) == []


def test_table_shows_every_row_in_percent(results):
    lines = format_table(results).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert cells[0][:5] == ["method", "budget", "accuracy %", "retention %", "kept tokens"]
    assert cells[0][5:] == [f"{kind} %" for kind in results["unpruned_kind_accuracy"]]
    assert cells[2][:4] == ["unpruned", "-", "50.0", "100.0"]
    assert len(cells) == 3 + len(results["results"])
    for row, kinds, line in zip(results["results"], results["kind_accuracy"], cells[3:], strict=True):
        assert line[:5] == [
            row["method"],
            f"{row['budget']:g}",
            f"{100 * row['accuracy']:.1f}",
            f"{100 * row['retention']:.1f}",
            f"{row['kept_tokens']:.1f}",
        ]
        assert line[5:] == [f"{100 * value:.1f}" for value in kinds.values()]


# ----------------------------------------------------------------------------- the command
def test_cli_writes_what_evaluate_computes(testbed, results, tmp_path, monkeypatch, capsys):
    base, processor, examples, _ = testbed
    monkeypatch.setattr(testbed_model, "load_testbed", lambda path: (base, processor))
    monkeypatch.setattr(tasks, "make_split", lambda split, n: examples[:n] if split == "validation" else [])
    output = tmp_path / "results.json"
    argv = [
        "eval",
        "--model",
        "org/testbed",
        "--methods",
        "uniform",
        "--budgets",
        "7",
        "--task",
        "v1",  # the fixture's examples are v1 ones (`tasks.make_split` is what the test replaces)
        "--split",
        "validation",
        "--limit",
        "6",
        "--seed",
        str(SEED),
        "--batch-size",
        str(BATCH),
        "--output",
        str(output),
    ]
    assert main(argv) == 0
    index = next(i for i, row in enumerate(results["results"]) if row["method"] == "uniform" and row["budget"] == 7)
    expected = dict(results, results=[results["results"][index]], kind_accuracy=[results["kind_accuracy"][index]])
    assert json.loads(output.read_text()) == eval_results_json(expected)
    captured = capsys.readouterr()
    assert format_table(expected) in captured.out
    assert "12/12" in captured.err  # one bar over (unpruned + 1 method x 1 budget) x 6 examples
    with Image.open(output.with_suffix(".png")) as image:
        assert image.format == "PNG"


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr(testbed_model, "load_testbed", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(tasks, "make_split", lambda *a, **k: pytest.fail("examples were made"))


def adapter_folder(path, method):
    TokenPruneConfig(method=method).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--methods", "nope"], r"`--methods`: unknown method 'nope'; registered selectors: \["),
        (["--methods", "uniform,autoselect"], r"`--adapters`: learned method\(s\) \['autoselect'\]"),
        (["--budgets", "0"], "`--budgets` as an int must be >= 1"),
        (["--budgets", "0.1,1.5"], r"`--budgets` as a float must be in \(0, 1\]"),
        (["--budgets", "0.1,abc"], "`--budgets`: 'abc' is not a number"),
        (["--budgets", ","], "`--budgets` is empty"),
        (["--limit", "0"], "`--limit`"),
        (["--split", "dev"], "`--split` must be one of"),
        (["--batch-size", "0"], "`--batch-size`"),
        (["--threads", "0"], "`--threads`"),
        (["--output", "plot.png"], "`--output`"),
        (["--adapters", "visionselector"], "`--adapters`: 'visionselector' is not method=folder_or_repo_id"),
        (["--adapters", "nope=somewhere"], "`--adapters`: unknown method 'nope'"),
        (["--adapters", "uniform=/no/such/folder", "--methods", "uniform"], "neither an existing folder nor a Hub"),
        (["--adapters", "uniform={tmp}/dart", "--methods", "uniform"], "holds a 'dart' selector, not 'uniform'"),
        (["--adapters", "uniform={tmp}/empty", "--methods", "uniform"], "has no token_prune_config.json"),
        (["--model", "/no/such/model"], "`--model`"),
        (["--model", "{tmp}/empty"], "`--model`.*config.json"),
    ],
)
def test_cli_refuses_bad_flags_before_loading(no_model_load, tmp_path, flags, match):
    adapter_folder(tmp_path / "dart", "dart")
    (tmp_path / "empty").mkdir()
    flags = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    model = [] if "--model" in flags else ["--model", "org/testbed"]
    with pytest.raises(ValueError, match=match):
        main(["eval", *model, *flags])


def test_default_methods_and_adapters(tmp_path, monkeypatch):
    training_free = [m for m in available_selectors() if not get_selector_class(m).trainable]
    parsed = check_eval_arguments(EvalArguments(model="org/testbed"))
    assert parsed["methods"] == training_free and parsed["adapters"] == {}
    assert parsed["budgets"] == [0.1, 0.2, 0.3, 0.5]
    # the bundled model brings the bundled adapters; its learned methods come first
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    defaults = {method: tmp_path / method for method in ("visionselector", "autoselect")}
    for method, path in defaults.items():
        adapter_folder(path, method)
    monkeypatch.setattr(testbed_eval, "DEFAULT_MODEL_DIR", tmp_path / "base")
    monkeypatch.setattr(testbed_eval, "DEFAULT_ADAPTERS", defaults)
    parsed = check_eval_arguments(EvalArguments(model=str(tmp_path / "base")))
    assert parsed["methods"] == ["visionselector", "autoselect", *training_free]
    assert parsed["adapters"] == defaults
    # an explicit empty --adapters means none, and then a learned method is refused
    assert check_eval_arguments(EvalArguments(model=str(tmp_path / "base"), adapters=""))["adapters"] == {}
    with pytest.raises(ValueError, match="`--adapters`"):
        check_eval_arguments(EvalArguments(model=str(tmp_path / "base"), adapters="", methods="autoselect"))


def test_adapter_by_hub_repo_id_from_the_cache(tmp_path, monkeypatch):
    adapter_folder(tmp_path / "repo", "uniform")
    commit = place_in_hf_cache(tmp_path / "repo", "org/uniform-adapter", tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = resolve_adapter("uniform", "org/uniform-adapter")
    assert folder == tmp_path / "hub" / "models--org--uniform-adapter" / "snapshots" / commit
    with pytest.raises(ValueError, match="`adapters`: Hub repo uniform='org/missing' was not found"):
        resolve_adapter("uniform", "org/missing")


def test_library_evaluate_takes_any_examples_and_lays_out_the_image_first(testbed):
    """Oracle: the library's own `predict` with its default prompt (image, then question), answers set from it;
    examples with no `kind` give no per-kind accuracy."""
    from types import SimpleNamespace

    base, processor, examples, _ = testbed
    images, questions = [e.image for e in examples], [e.question for e in examples]
    prompt = evaluate_module.build_batch(processor, images[:1], questions[:1])["input_ids"][0].tolist()
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    question_ids = processor.tokenizer(questions[0], add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(prompt)) if prompt[i : i + len(question_ids)] == question_ids)
    assert prompt.index(image_id) < start
    said, _, _ = evaluate_module.predict(base, processor, images, questions, BATCH)
    plain = [SimpleNamespace(image=e.image, question=e.question, answer=a) for e, a in zip(examples, said, strict=True)]
    out = evaluate_module.evaluate(base, processor, plain, ["uniform"], [1.0], batch_size=BATCH, progress=False)
    assert out["unpruned_accuracy"] == 1.0 and out["results"][0]["retention"] == 1.0
    assert out["unpruned_kind_accuracy"] == {} and out["kind_accuracy"] == [{}]


def test_evidence_recall_is_the_share_of_evidence_tokens_kept(testbed):
    """Issue 15: the LLM-free selection probe. Oracle: the keep masks of a hand loop over `predict`, scored against
    the testbed generator's evidence cells; keeping everything recalls all of it."""
    from hf_tokenprune.evaluate import evaluate as library_evaluate
    from hf_tokenprune.evaluate import evidence_recall

    base, processor, _, _ = testbed
    import dataclasses

    drawn = [tasks.make_example(200 + i, kind=tasks.KINDS[i % len(tasks.KINDS)]) for i in range(4)]
    answers, _, _ = predict(base, processor, [e.image for e in drawn], [e.question for e in drawn], BATCH)
    drawn = [dataclasses.replace(example, answer=answer) for example, answer in zip(drawn, answers, strict=True)]
    evidence = [torch.from_numpy(tasks.evidence_token_mask(example)) for example in drawn]
    found = library_evaluate(
        base,
        processor,
        drawn,
        ["uniform"],
        [0.3, 1.0],
        batch_size=BATCH,
        progress=False,
        messages_for=testbed_model.messages_for,
        evidence_of=lambda example: evidence[drawn.index(example)],
    )
    masks = []
    pruned = get_pruned_model(base, TokenPruneConfig(method="uniform"))
    predict(
        pruned,
        processor,
        [e.image for e in drawn],
        [e.question for e in drawn],
        BATCH,
        keep_masks=masks,
        prune_budget=0.3,
    )
    hand = sum(float(mask[truth].float().mean()) for mask, truth in zip(masks, evidence, strict=True)) / len(drawn)
    assert all(mask.shape == truth.shape for mask, truth in zip(masks, evidence, strict=True))
    assert found["evidence_recall"][0] == pytest.approx(hand)
    assert 0.0 < hand < 1.0
    assert found["evidence_recall"][1] == 1.0
    assert "evidence recall %" in format_table(found)
    assert evidence_recall(torch.tensor([True, False, True]), torch.tensor([True, True, False])) == 0.5
