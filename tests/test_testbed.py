"""The testbed VLM, its processor, the end-to-end recipe at toy scale, and the bundled trained model + demo.

Oracles: the task generator's own answers and geometry, the processor before saving, the library path
(`get_pruned_model` + `generate`) for what the demo prints, `tokens_to_keep` for kept counts.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from hf_tokenprune import get_pruned_model
from hf_tokenprune.cli import main
from hf_tokenprune.modeling.pruning import tokens_to_keep
from hf_tokenprune.processing import load_processor
from hf_tokenprune_testbed.model import (
    BUNDLED_METHODS,
    BUNDLED_TASK,
    DEFAULT_ADAPTERS,
    DEFAULT_DIR,
    DEFAULT_MODEL_DIR,
    MERGE_SIZE,
    build_batch,
    load_testbed,
    predict,
)
from hf_tokenprune_testbed.model import (
    testbed_processor as make_testbed_processor,
)
from hf_tokenprune_testbed.pipeline import ReproduceArguments, Stages, run_reproduce
from hf_tokenprune_testbed.scenes import task_split
from hf_tokenprune_testbed.tasks import VOCABULARY, make_split, token_grid


@pytest.fixture(scope="module")
def examples():
    return make_split("validation", 12)


def test_tokenizer_knows_every_task_word_and_round_trips(examples):
    tokenizer = make_testbed_processor().tokenizer
    ids = tokenizer(list(VOCABULARY), add_special_tokens=False)["input_ids"]
    assert all(len(word_ids) == 1 and word_ids[0] != tokenizer.unk_token_id for word_ids in ids)
    for example in examples:
        encoded = tokenizer(example.question, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(encoded) == example.question


def test_processor_geometry_matches_the_task_token_grid(examples):
    processor = make_testbed_processor()
    batch = build_batch(processor, [e.image for e in examples], [e.question for e in examples])
    for row, example in enumerate(examples):
        _, height, width = batch["image_grid_thw"][row].tolist()
        assert (height // MERGE_SIZE, width // MERGE_SIZE) == token_grid(*example.image.size)
        visual = int((batch["input_ids"][row] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
        assert visual == (height // MERGE_SIZE) * (width // MERGE_SIZE)


def test_processor_saves_and_loads_without_torchvision(tmp_path, examples):
    processor = make_testbed_processor()
    processor.save_pretrained(tmp_path)
    loaded = load_processor(tmp_path)
    images, questions = [e.image for e in examples[:3]], [e.question for e in examples[:3]]
    expected, got = build_batch(processor, images, questions), build_batch(loaded, images, questions)
    assert set(expected) == set(got)
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_recipe_end_to_end_at_toy_scale(tmp_path, monkeypatch):
    """Data -> VLM -> three selectors through the training entry point -> eval JSON, all stages wired together.

    A VLM trained for two steps answers nothing right, and retention is undefined then; so the test examples'
    answers are set to what that model says (the real `evaluate` runs on them) to make unpruned accuracy 1.
    """
    import hf_tokenprune_testbed.evaluate as evaluate_module

    real_evaluate = evaluate_module.evaluate

    def evaluate_on_own_answers(base, processor, examples, *args, **kwargs):
        said, _, _ = predict(base, processor, [e.image for e in examples], [e.question for e in examples])
        examples = [dataclasses.replace(e, answer=a) for e, a in zip(examples, said, strict=True)]
        return real_evaluate(base, processor, examples, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", evaluate_on_own_answers)
    args = ReproduceArguments(
        output=str(tmp_path / "run"),
        vision_steps=2,
        vlm_schedule="2:1e-3,2:1e-2",  # the first step of a round warms up from lr 0
        vlm_batch_size=2,
        vlm_cached_records=3,  # rounds of 2 steps over 3 records: epochs, a short last batch
        selector_records=4,
        selector_steps=1,
        selector_method_steps="",
        selector_batch_size=2,
        eval_limit=4,
        budgets="0.5",
        threads=1,
    )
    results = run_reproduce(args)
    run = tmp_path / "run"
    saved = json.loads((run / "eval_results.json").read_text())
    assert saved == {key: results[key] for key in ("unpruned_accuracy", "results")}
    assert json.loads((run / "eval_results_v1.json").read_text())["results"]  # both tasks are in the table
    assert (run / "eval_results_table.md").is_file() and (run / "eval_results_v1_table.md").is_file()
    methods = {row["method"] for row in results["results"]}
    assert set(BUNDLED_METHODS) <= methods
    timings = json.loads((run / "timings.json").read_text())
    stages = ["vision", "vlm-round-1", "vlm-round-2", "records", *(f"selector-{m}" for m in BUNDLED_METHODS)]
    stages += ["eval-v2", "eval-v1"]
    assert list(json.loads((run / "stages.json").read_text())["done"]) == stages
    assert timings["total_seconds"] == pytest.approx(sum(timings[f"{name}_seconds"] for name in stages))
    assert results["unpruned_accuracy"] == 1.0
    base, processor = load_testbed(run / "base")
    round_one, _ = load_testbed(run / "vlm-round-1")  # the second round went on from the first
    assert json.loads((run / "base" / "training_log.json").read_text())[-1]["step"] == 2
    assert any(not torch.equal(p, q) for p, q in zip(round_one.parameters(), base.parameters(), strict=True))
    for method in BUNDLED_METHODS:
        adapter = run / method
        assert (adapter / "token_selector.safetensors").is_file() and (adapter / "README.md").is_file()
        assert "## Results" in (adapter / "README.md").read_text()
        get_pruned_model(base, adapter)  # loads: names, shapes and widths match the base
    assert not list(run.glob("*.partial"))


TOY_RECIPE = dict(
    vision_steps=1,
    vlm_schedule="1:1e-3",
    vlm_batch_size=2,
    vlm_cached_records=2,
    selector_records=2,
    selector_steps=1,
    selector_method_steps="",
    selector_batch_size=2,
    eval_limit=2,
    eval_tasks="v2",
    budgets="0.5",
    threads=1,
)


def fake_run_eval(monkeypatch) -> list[int]:
    """Replace the recipe's eval stage by one that writes a fixed one-row result; returns the list of the `limit`s
    it is called with."""
    import hf_tokenprune_testbed.evaluate as evaluate_module

    limits = []

    def run_eval(args):
        limits.append(args.limit)
        row = {"method": "random", "budget": 0.5, "accuracy": 0.5, "retention": 1.0, "kept_tokens": 1.0}
        results = {"unpruned_accuracy": 0.5, "results": [row]}
        Path(args.output).write_text(json.dumps(results))
        return results

    monkeypatch.setattr(evaluate_module, "run_eval", run_eval)
    return limits


def test_reproduce_resumes_from_the_last_finished_stage(tmp_path, monkeypatch):
    """A stage cut off mid-way (here: autoselect's training raises after writing part of its folder) leaves the
    finished stages recorded; the rerun skips them (their functions would fail if called) and redoes the cut one."""
    import hf_tokenprune_testbed.pipeline as pipeline

    fake_run_eval(monkeypatch)
    real_train_selector = pipeline.train_selector

    def cut_off(method, base_dir, records, adapter, args):
        if method == "autoselect":
            adapter.mkdir(parents=True)
            (adapter / "token_prune_config.json").write_text("{")  # half-written
            raise KeyboardInterrupt("session ended")
        return real_train_selector(method, base_dir, records, adapter, args)

    monkeypatch.setattr(pipeline, "train_selector", cut_off)
    args = ReproduceArguments(output=str(tmp_path / "run"), **TOY_RECIPE)
    with pytest.raises(KeyboardInterrupt):
        run_reproduce(args)
    run = tmp_path / "run"
    done = json.loads((run / "stages.json").read_text())["done"]
    before = BUNDLED_METHODS[: BUNDLED_METHODS.index("autoselect")]
    assert list(done) == ["vision", "vlm-round-1", "records", *(f"selector-{method}" for method in before)]
    assert not (run / "autoselect").exists() and (run / "autoselect.partial").is_dir()  # never looks finished
    weights = (run / "base" / "model.safetensors").read_bytes()

    def must_not_rerun(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(pipeline, "train_vision_stage", must_not_rerun)
    monkeypatch.setattr(pipeline, "train_vlm", must_not_rerun)
    monkeypatch.setattr(pipeline, "write_records", must_not_rerun)
    selectors_run = []
    monkeypatch.setattr(
        pipeline,
        "train_selector",
        lambda method, *rest: selectors_run.append(method) or real_train_selector(method, *rest),
    )
    run_reproduce(dataclasses.replace(args, threads=2))  # threads change no result: a resume may change them
    assert selectors_run == ["autoselect", "reconstruction"]
    assert (run / "base" / "model.safetensors").read_bytes() == weights
    assert json.loads((run / "autoselect" / "token_prune_config.json").read_text())["method"] == "autoselect"
    assert not (run / "autoselect.partial").exists()
    assert list(json.loads((run / "stages.json").read_text())["done"])[-3:] == [
        "selector-autoselect",
        "selector-reconstruction",
        "eval-v2",
    ]


def test_parse_schedule_reads_each_rounds_fields_and_their_defaults():
    from hf_tokenprune_testbed.pipeline import Round, parse_schedule

    assert parse_schedule("5:1e-3,6:2e-3:easy,7:3e-3:full:9,8:4e-3:full:10:0.5,9:5e-3:full:11:1:0.25", 4) == [
        Round(5, 1e-3, "full", 4, 0.0, 0.0),
        Round(6, 2e-3, "easy", 4, 0.0, 0.0),
        Round(7, 3e-3, "full", 9, 0.0, 0.0),
        Round(8, 4e-3, "full", 10, 0.5, 0.0),
        Round(9, 5e-3, "full", 11, 1.0, 0.25),
    ]
    for bad in ("9:5e-3:full:11:1:1.5", "9:5e-3:full:11:1:0.5:7"):
        with pytest.raises(ValueError, match="vlm_schedule"):
            parse_schedule(bad, 4)


def _cached_items(n: int, caption_every: int = 0):
    from hf_tokenprune_testbed.model import new_testbed_model
    from hf_tokenprune_testbed.pipeline import CachedVisualTokens, GeneratedRecords

    model, processor = new_testbed_model(0)
    items = CachedVisualTokens(model, processor, GeneratedRecords("train", n, caption_every), 2, num_workers=0)
    return model, processor, [items[i] for i in range(n)]


def test_token_dropout_leaves_out_only_tokens_the_question_is_not_about_at_their_unpruned_positions():
    """Oracle: the whole batch through the stock forward, the left-out tokens masked out of attention and every
    position given by the stock `get_rope_index` on the whole sequence: the kept tokens' logits must match."""
    from hf_tokenprune.testing import _mrope_positions
    from hf_tokenprune_testbed.pipeline import TokenDropout, collate_cached

    model, processor, items = _cached_items(4, caption_every=2)
    pad = processor.tokenizer.pad_token_id
    dropout = TokenDropout(model, pad, share=1.0, minimum=0.2, seed=0)
    keeps = [dropout.keep_mask(item) for item in items]
    dropout.generator.manual_seed(0)  # the same draws again, inside the call
    thinned = dropout(items)
    whole = collate_cached(items, pad)
    whole.pop("token_relevance")
    positions = _mrope_positions(model, whole)  # the stock `get_rope_index`
    masked = whole["attention_mask"].clone()
    for row, keep in enumerate(keeps):
        masked[row, : len(keep)] = keep.long()
        visual = items[row]["input_ids"] == model.config.image_token_id
        relevance = items[row]["token_relevance"]
        assert keep[visual][relevance > 0.5].all()  # the evidence always stays
        others = (relevance < 0.5).sum().item()
        assert 0.2 * others - 1 <= keep[visual][relevance < 0.5].sum() <= others
        assert (~keep).sum() > 0 and keep[~visual].all()  # only visual tokens go
        assert torch.equal(thinned["token_relevance"][row][: keep[visual].sum()], relevance[keep[visual]])
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(**{**whole, "attention_mask": masked, "position_ids": positions}).logits
        got = model(**{k: v for k, v in thinned.items() if k != "token_relevance"}).logits
    for row, keep in enumerate(keeps):
        length = int(keep.sum())
        torch.testing.assert_close(got[row, :length], reference[row, : len(keep)][keep], rtol=1e-4, atol=1e-5)
        assert torch.equal(thinned["labels"][row, :length], whole["labels"][row, : len(keep)][keep])


def test_token_dropout_with_share_0_is_the_plain_collator_with_the_stock_positions():
    """Oracle: `collate_cached` and the stock `get_rope_index`; share 0.5 thins some records and not others."""
    from hf_tokenprune.testing import _mrope_positions
    from hf_tokenprune_testbed.pipeline import TokenDropout, collate_cached

    model, processor, items = _cached_items(6)
    pad = processor.tokenizer.pad_token_id
    batch = TokenDropout(model, pad, share=0.0)(items)
    plain = collate_cached(items, pad)
    positions = _mrope_positions(model, plain)  # the stock `get_rope_index`
    real = plain["attention_mask"].bool()
    assert torch.equal(batch.pop("position_ids")[:, real], positions[:, real])
    for key, value in plain.items():
        if key != "mm_encoder_outputs":
            assert torch.equal(batch[key], value), key
    half = TokenDropout(model, pad, share=0.5, seed=1)
    thinned = [bool((~half.keep_mask(item)).any()) for item in items * 5]
    assert 0 < sum(thinned) < len(thinned)
    with pytest.raises(ValueError, match="share"):
        TokenDropout(model, pad, share=1.5)


def test_reproduce_goes_on_from_a_finished_run_with_rounds_appended(tmp_path, monkeypatch):
    """Oracle: the stage functions' calls. A finished one-round run rerun with a second round appended skips the
    vision stage, round 1 and the records, trains round 2 from round 1's weights (moved from `base` to its round
    folder) with that round's count weight, and reruns the selectors and the eval, which read the new `base`."""
    import hf_tokenprune_testbed.pipeline as pipeline

    fake_run_eval(monkeypatch)
    args = ReproduceArguments(output=str(tmp_path / "run"), **TOY_RECIPE)
    run_reproduce(args)
    run = tmp_path / "run"
    round_one = (run / "base" / "model.safetensors").read_bytes()

    def must_not_rerun(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(pipeline, "train_vision_stage", must_not_rerun)
    monkeypatch.setattr(pipeline, "write_records", must_not_rerun)
    real_train_vlm, rounds_run = pipeline.train_vlm, []

    def train_vlm(output_dir, **kwargs):
        rounds_run.append((output_dir.name, Path(kwargs["init_from"]).name, kwargs["count_weight"], kwargs["drop"]))
        return real_train_vlm(output_dir, **kwargs)

    monkeypatch.setattr(pipeline, "train_vlm", train_vlm)
    selectors_run = []
    real_train_selector = pipeline.train_selector
    monkeypatch.setattr(
        pipeline, "train_selector", lambda m, *rest: selectors_run.append(m) or real_train_selector(m, *rest)
    )
    run_reproduce(
        dataclasses.replace(args, vlm_schedule="1:1e-3,2:1e-2:full:2:0.5:1")
    )  # 2 steps: the first warms up from lr 0; every record of round 2 thinned out by `TokenDropout`
    assert rounds_run == [("base.partial", "vlm-round-1", 0.5, 1.0)]
    assert (run / "vlm-round-1" / "model.safetensors").read_bytes() == round_one
    assert (run / "base" / "model.safetensors").read_bytes() != round_one
    assert selectors_run == list(BUNDLED_METHODS)
    state = json.loads((run / "stages.json").read_text())
    assert state["arguments"]["vlm_schedule"] == "1:1e-3,2:1e-2:full:2:0.5:1"
    assert list(state["done"]) == [
        "vision",
        "vlm-round-1",
        "records",
        "vlm-round-2",
        *(f"selector-{m}" for m in BUNDLED_METHODS),
        "eval-v2",
    ]
    with pytest.raises(ValueError, match="vlm_schedule"):  # not an extension: dropping a round is refused
        run_reproduce(dataclasses.replace(args, vlm_schedule="1:1e-3"))


def test_reproduce_reruns_only_the_stages_that_read_a_changed_downstream_argument(tmp_path, monkeypatch):
    """Oracle: which stage functions run. After a finished run, a new `selector_steps` reruns the three selectors and
    the eval (not the VLM or the records); then a new `eval_limit` reruns the eval alone."""
    import hf_tokenprune_testbed.pipeline as pipeline

    evals = fake_run_eval(monkeypatch)
    args = ReproduceArguments(output=str(tmp_path / "run"), **TOY_RECIPE)
    run_reproduce(args)

    def must_not_rerun(*args, **kwargs):
        raise AssertionError("a stage that reads no changed argument ran again")

    for name in ("train_vision_stage", "train_vlm", "write_records"):
        monkeypatch.setattr(pipeline, name, must_not_rerun)
    selectors_run, real_run_train = [], pipeline.run_train

    def run_train(model_args, data_args, training_args):  # what the library's training entry point is asked to do
        selectors_run.append((model_args.method, training_args.max_steps))
        return real_run_train(model_args, data_args, training_args)

    monkeypatch.setattr(pipeline, "run_train", run_train)
    run_reproduce(dataclasses.replace(args, selector_steps=2))
    assert selectors_run == [(method, 2) for method in BUNDLED_METHODS] and evals == [2, 2]
    run_reproduce(dataclasses.replace(args, selector_steps=2, eval_limit=3))
    assert len(selectors_run) == len(BUNDLED_METHODS) and evals == [2, 2, 3]
    state = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert state["arguments"]["selector_steps"] == 2 and state["arguments"]["eval_limit"] == 3
    # Per-method steps: the named selector trains that long, the others --selector_steps; the evals rerun.
    selectors_run.clear()
    method = BUNDLED_METHODS[0]
    run_reproduce(dataclasses.replace(args, selector_steps=2, eval_limit=3, selector_method_steps=f"{method}=3"))
    assert selectors_run == [(name, 3 if name == method else 2) for name in BUNDLED_METHODS]
    assert evals == [2, 2, 3, 3]
    # Both tasks: v1 evaluates its own number of examples; changing it reruns the evals alone.
    selectors_run.clear()
    both = dataclasses.replace(args, selector_steps=2, eval_limit=3, selector_method_steps=f"{method}=3")
    run_reproduce(dataclasses.replace(both, eval_tasks="v2,v1", v1_eval_limit=1))
    assert selectors_run == [] and evals[4:] == [3, 1]
    run_reproduce(dataclasses.replace(both, eval_tasks="v2,v1", v1_eval_limit=2))
    assert selectors_run == [] and evals[6:] == [3, 2]
    # visionselector's constraint: that selector alone trains again (with it), then the evals.
    constant = dataclasses.replace(both, eval_tasks="v2,v1", v1_eval_limit=2, visionselector_lambda_end=0.7)
    trained, real_arguments = [], pipeline.TokenPruneTrainingArguments

    def training_arguments(**fields):
        trained.append((fields.get("lambda_end"), fields["train_budget"]))
        return real_arguments(**fields)

    monkeypatch.setattr(pipeline, "TokenPruneTrainingArguments", training_arguments)
    run_reproduce(constant)
    visionselector_run = [("visionselector", 3 if method == "visionselector" else 2)]
    assert selectors_run == visionselector_run and trained == [(0.7, 0.05)]
    assert evals[8:] == [3, 2]
    # visionselector's own budget: that selector alone trains again at it, then the evals; `train_budget` is the
    # other selectors' (the first run above trained them at its default 0.1).
    selectors_run.clear()
    run_reproduce(dataclasses.replace(constant, visionselector_train_budget=0.2))
    assert selectors_run == visionselector_run and trained[1:] == [(0.7, 0.2)]
    assert evals[10:] == [3, 2]
    selectors_run.clear()
    run_reproduce(dataclasses.replace(constant, visionselector_train_budget=0.2, train_budget=0.3))
    assert [name for name, _ in selectors_run] == list(BUNDLED_METHODS)
    assert [budget for _, budget in trained[2:]] == [
        0.2 if name == "visionselector" else 0.3 for name in BUNDLED_METHODS
    ]


@pytest.mark.parametrize(
    "value", ["visionselector", "visionselector=0", "nope=3", "visionselector=x", "visionselector=-2"]
)
def test_bad_selector_method_steps_fail_before_anything_runs(tmp_path, value):
    args = ReproduceArguments(output=str(tmp_path / "run"), **{**TOY_RECIPE, "selector_method_steps": value})
    with pytest.raises(ValueError, match="selector_method_steps"):
        run_reproduce(args)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["train_budget", "visionselector_train_budget"])
@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_bad_training_budgets_fail_before_anything_runs(tmp_path, name, value):
    args = ReproduceArguments(output=str(tmp_path / "run"), **{**TOY_RECIPE, name: value})
    with pytest.raises(ValueError, match=f"`{name}`"):
        run_reproduce(args)
    assert not (tmp_path / "run").exists()


def test_a_run_from_before_visionselector_had_its_own_budget_trained_it_at_train_budget(tmp_path):
    """stages.json without `visionselector_train_budget` means visionselector trained at the run's `train_budget`:
    resumed at that value every stage stays done; at today's default (0.05) that selector and the evals rerun."""
    run = tmp_path / "run"
    run.mkdir()
    arguments = {key: value for key, value in dataclasses.asdict(ReproduceArguments(train_budget=0.2)).items()}
    for key in ("output", "threads", "bundle", "bundle_dir", "visionselector_train_budget"):
        arguments.pop(key)
    done = {"vision": 1.0, "records": 1.0, "selector-visionselector": 1.0, "selector-autoselect": 1.0, "eval-v2": 1.0}
    (run / "stages.json").write_text(json.dumps({"arguments": arguments, "done": done}))
    assert ReproduceArguments().visionselector_train_budget == 0.05
    stages = Stages(run, ReproduceArguments(output=str(run), train_budget=0.2, visionselector_train_budget=0.2))
    assert all(stages.done(stage) for stage in done)
    stages = Stages(run, ReproduceArguments(output=str(run), train_budget=0.2))
    assert [stage for stage in done if stages.done(stage)] == ["vision", "records", "selector-autoselect"]


def test_reproduce_refuses_to_resume_with_other_arguments(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    arguments = {key: value for key, value in dataclasses.asdict(ReproduceArguments()).items()}
    for key in ("output", "threads", "bundle", "bundle_dir"):
        arguments.pop(key)
    (run / "stages.json").write_text(json.dumps({"arguments": arguments, "done": {"vision": 1.0}}))
    with pytest.raises(ValueError, match="vlm_schedule"):
        run_reproduce(ReproduceArguments(output=str(run), vlm_schedule="5:1e-3", threads=1))
    assert json.loads((run / "stages.json").read_text())["done"] == {"vision": 1.0}  # left as it was


def test_reproduce_reads_a_run_recorded_before_an_argument_existed_at_its_value_then(tmp_path):
    """`vlm_relevance_layer` came after runs/testbed-v2 was recorded: its stages.json lacks it, which means the value
    every run had then (2, `Stages.RECORDED_BEFORE`, not today's default 3); resuming with another value is refused
    like any other upstream change."""
    run = tmp_path / "run"
    run.mkdir()
    arguments = {key: value for key, value in dataclasses.asdict(ReproduceArguments()).items()}
    for key in ("output", "threads", "bundle", "bundle_dir", "vlm_relevance_layer"):
        arguments.pop(key)
    (run / "stages.json").write_text(json.dumps({"arguments": arguments, "done": {"vision": 1.0}}))
    assert ReproduceArguments().vlm_relevance_layer == 3
    with pytest.raises(ValueError, match="vlm_relevance_layer"):
        run_reproduce(ReproduceArguments(output=str(run), threads=1))
    assert Stages(run, ReproduceArguments(output=str(run), vlm_relevance_layer=2)).done("vision")


@pytest.mark.parametrize("name", ["testbed-v2", "testbed-v3", "testbed-v5", "testbed-v6"])
def test_the_committed_runs_resume_with_the_arguments_they_ran_at(tmp_path, name):
    """Each committed run's stages.json, read with the arguments the docs give for it (testbed-v2 and v3 at 4 layers
    from before `vlm_layers` existed, and from before visionselector had its own training budget; testbed-v5 and v6 at
    today's defaults; all of them 128 wide, recorded before `vlm_width` existed), resumes with every stage done;
    another depth or width is refused."""
    run = tmp_path / name
    run.mkdir()
    shutil.copyfile(Path(__file__).resolve().parents[1] / "runs" / name / "stages.json", run / "stages.json")
    done = json.loads((run / "stages.json").read_text())["done"]
    old_schedule = "2000:2e-3:easy,2000:1e-3:full:8000,1000:1e-3:full:6000:1,1000:1e-3:full:6000:1"
    before_own_budget = dict(visionselector_train_budget=0.1)  # visionselector trained at `train_budget` then
    ran_at = {
        "testbed-v2": dict(vlm_layers=4, vlm_relevance_layer=2, vlm_schedule=old_schedule, **before_own_budget),
        "testbed-v3": dict(vlm_layers=4, vlm_relevance_layer=3, vlm_schedule=old_schedule, **before_own_budget),
        "testbed-v5": {},
        "testbed-v6": {},
    }[name]
    stages = Stages(run, ReproduceArguments(output=str(run), **ran_at))
    assert done and all(stages.done(stage) for stage in done)
    for other in ({"vlm_layers": 6}, {"vlm_width": 256}):
        with pytest.raises(ValueError, match=next(iter(other))):
            Stages(run, ReproduceArguments(output=str(run), **{**ran_at, **other}))


def test_reproduce_passes_the_relevance_layer_to_every_vlm_round(tmp_path, monkeypatch):
    from hf_tokenprune_testbed import pipeline

    seen = []

    class Stop(Exception):
        pass

    def fake_train_vlm(target, **kwargs):
        seen.append(kwargs["relevance_layer"])
        raise Stop

    monkeypatch.setattr(pipeline, "train_vlm", fake_train_vlm)
    with pytest.raises(Stop):
        run_reproduce(
            ReproduceArguments(output=str(tmp_path / "run"), vision_steps=0, vlm_relevance_layer=3, threads=1)
        )
    assert seen == [3]


def test_a_done_stage_whose_uncommitted_output_is_gone_runs_again(tmp_path):
    """`rerun_if_missing` (the selector records, not committed): a clone of a run in progress has the stage done in
    stages.json but not its folder, so it runs again; with the folder there, or without the flag, it is skipped."""
    run = tmp_path / "run"
    stages = Stages(run, ReproduceArguments(output=str(run)))
    calls = []

    def write(target):
        calls.append(target.name)
        target.mkdir(parents=True)

    stages.run("records", write, run / "selector_data", rerun_if_missing=True)
    stages.run("records", write, run / "selector_data", rerun_if_missing=True)  # there: skipped
    assert calls == ["selector_data.partial"]
    shutil.rmtree(run / "selector_data")
    stages.run("records", write, run / "selector_data")  # without the flag: skipped although gone
    assert calls == ["selector_data.partial"]
    again = Stages(run, ReproduceArguments(output=str(run)))  # as a resumed run reads stages.json
    again.run("records", write, run / "selector_data", rerun_if_missing=True)
    assert calls == ["selector_data.partial"] * 2 and (run / "selector_data").is_dir() and again.done("records")


def test_reproduce_builds_the_language_model_at_vlm_layers(tmp_path, monkeypatch):
    """`vlm_layers` sets the decoder depth of the model stage 1 creates (what every later round goes on from), and
    bounds `vlm_relevance_layer` (layers - 1); the stock config of a fresh model has that many layers."""
    from hf_tokenprune_testbed import pipeline
    from hf_tokenprune_testbed.model import TEXT_SIZES, new_testbed_model

    built = []

    class Stop(Exception):
        pass

    def fake_pretrain_vision(model, *args, **kwargs):
        built.append(model.config.text_config.num_hidden_layers)
        raise Stop

    monkeypatch.setattr(pipeline, "pretrain_vision", fake_pretrain_vision)
    with pytest.raises(Stop):
        run_reproduce(ReproduceArguments(output=str(tmp_path / "run"), vlm_layers=6, vlm_relevance_layer=5, threads=1))
    assert built == [6]
    with pytest.raises(ValueError, match=r"vlm_relevance_layer.*\[1, 2\]"):
        run_reproduce(
            ReproduceArguments(output=str(tmp_path / "other"), vlm_layers=3, vlm_relevance_layer=3, threads=1)
        )
    model, _ = new_testbed_model(0)
    assert (
        model.config.text_config.num_hidden_layers
        == TEXT_SIZES["num_hidden_layers"]
        == len(model.model.language_model.layers)
    )
    model, _ = new_testbed_model(0, 5)
    assert len(model.model.language_model.layers) == 5


def test_reproduce_builds_the_language_model_at_vlm_width(tmp_path, monkeypatch):
    """`vlm_width` sets the width of the language model stage 1 creates: 32-wide heads, an FFN 4x as wide, the tower's
    merger projecting to it; the stock config of a fresh model is `TEXT_SIZES`'s, and a width the 32-wide heads do not
    divide is refused."""
    from hf_tokenprune_testbed import pipeline
    from hf_tokenprune_testbed.model import TEXT_SIZES, new_testbed_model

    built = []

    class Stop(Exception):
        pass

    def fake_pretrain_vision(model, *args, **kwargs):
        built.append(model)
        raise Stop

    monkeypatch.setattr(pipeline, "pretrain_vision", fake_pretrain_vision)
    with pytest.raises(Stop):
        run_reproduce(ReproduceArguments(output=str(tmp_path / "run"), vlm_width=96, threads=1))
    (model,) = built
    text = model.config.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads) == (96, 384, 3)
    assert model.model.language_model.layers[0].mlp.up_proj.weight.shape == (384, 96)
    assert model.model.visual.merger.mlp[-1].out_features == 96
    model, _ = new_testbed_model(0)
    assert model.config.text_config.hidden_size == TEXT_SIZES["hidden_size"] == model.lm_head.in_features
    with pytest.raises(ValueError, match="text_width"):
        new_testbed_model(0, text_width=48)


# ----------------------------------------------------------------------------- the bundled default
BASE_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def hub_layout_dir(tmp_path_factory):
    """The bundled default's Hub-layout repos, materialised into a cache folder of this test run."""
    from hf_tokenprune_testbed.bundled import hub_layout

    return hub_layout(tmp_path_factory.mktemp("hub-cache"))


def test_bundle_is_small_and_holds_only_what_training_produced():
    from hf_tokenprune_testbed.bundled import BUNDLED_ADAPTER_FILES

    files = [path for path in DEFAULT_DIR.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 30 * 1024 * 1024
    assert (DEFAULT_MODEL_DIR / "model.safetensors").is_file()
    for method, adapter in DEFAULT_ADAPTERS.items():
        config = json.loads((adapter / "token_prune_config.json").read_text())
        assert config["method"] == method and config["base_model_name_or_path"] == "../base"
        assert not list(adapter.glob("model*.safetensors")), "adapters store no base weights"
    assert {path.relative_to(DEFAULT_DIR).as_posix() for path in files} == {
        *(f"base/{name}" for name in BASE_FILES),
        *(f"{method}/{name}" for method in BUNDLED_METHODS for name in BUNDLED_ADAPTER_FILES),
    }


def test_hub_layout_holds_the_current_remote_code_and_no_base_weights(hub_layout_dir):
    """Oracle: the files transformers copies for the model class (its relative imports), the modeling folder itself,
    the bundled files, and the auto_map of the class."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from hf_tokenprune import PrunedQwen2_5_VLForConditionalGeneration

    modeling = Path(__file__).resolve().parents[1] / "modeling"
    entry = modeling / "modeling_pruned_qwen2_5_vl.py"
    code = {entry.name} | {Path(name).name for name in get_relative_import_files(str(entry))}
    assert {path.name for path in hub_layout_dir.iterdir()} == {"base", *BUNDLED_METHODS}
    assert {path.name for path in (hub_layout_dir / "base").iterdir()} == BASE_FILES
    for method in BUNDLED_METHODS:
        adapter = hub_layout_dir / method
        assert {path.name for path in adapter.iterdir()} == {
            *code,
            "config.json",
            "README.md",
            "token_selector.safetensors",
            "token_prune_config.json",
            "training_recipe.json",
            "eval_results.json",
        }
        for name in code:
            assert (adapter / name).read_bytes() == (modeling / name).read_bytes(), f"{method}/{name} is stale"
        for name in ("token_selector.safetensors", "training_recipe.json", "eval_results.json"):
            assert (adapter / name).read_bytes() == (DEFAULT_ADAPTERS[method] / name).read_bytes(), name
        saved = json.loads((adapter / "token_prune_config.json").read_text())
        assert saved == json.loads((DEFAULT_ADAPTERS[method] / "token_prune_config.json").read_text())
        config = json.loads((adapter / "config.json").read_text())
        assert config["auto_map"] == PrunedQwen2_5_VLForConditionalGeneration.auto_map()
        card = (adapter / "README.md").read_text()
        # no path of this machine: the snippet loads the layout through `hub_adapter` (run in its own test)
        assert str(adapter.parent) not in card and f'hub_adapter("{adapter.name}")' in card


def test_hub_layout_is_built_once_per_hash_and_atomically(hub_layout_dir, monkeypatch):
    from hf_tokenprune_testbed import bundled

    assert hub_layout_dir.name == f"testbed-{bundled.layout_hash()}"
    assert bundled.hub_layout(hub_layout_dir.parent) == hub_layout_dir  # found, not rebuilt
    assert [path.name for path in hub_layout_dir.parent.iterdir()] == [hub_layout_dir.name]  # no staging left
    monkeypatch.setattr(bundled, "layout_hash", lambda: "changed-code")
    monkeypatch.setattr(bundled, "get_pruned_model", lambda *a: pytest.fail("a model was built"))
    cache = hub_layout_dir.parent / "other"
    with pytest.raises(pytest.fail.Exception):
        bundled.hub_layout(cache)
    assert list(cache.iterdir()) == []  # an interrupted build leaves nothing that looks complete


CHILD = """
import sys
sys.modules["hf_tokenprune"] = None  # a Hub user has only transformers
import json
import shutil
import torch
from transformers import AutoModelForImageTextToText

model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
inputs = torch.load(sys.argv[2])
out = model.generate(**inputs, prune_budget=0.2, max_new_tokens=3, do_sample=False)
print(json.dumps({"module": type(model).__module__, "tokens": out.tolist()}))
"""


@pytest.mark.parametrize("method", BUNDLED_METHODS)
def test_hub_layout_loads_through_remote_code_without_hf_tokenprune(hub_layout_dir, method, tmp_path, examples):
    """Oracle: the library's pruned model (stock base + bundled adapter) on the same inputs and budget."""
    import os
    import subprocess
    import sys

    base, processor = load_testbed()
    batch = build_batch(processor, [e.image for e in examples[:2]], [e.question for e in examples[:2]])
    torch.save(dict(batch), tmp_path / "inputs.pt")
    expected = get_pruned_model(base, DEFAULT_ADAPTERS[method]).generate(
        **batch, prune_budget=0.2, max_new_tokens=3, do_sample=False
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(hub_layout_dir / method), str(tmp_path / "inputs.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout: nothing of it on sys.path
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.")
    assert result["tokens"] == expected.tolist()


def test_bundled_model_answers_better_than_the_answer_prior():
    """The bundled VLM uses the image: on its task it beats the best guess from the question alone (each kind's
    answers are exactly balanced, so that guess scores the mean of 1 / number of answers) by a wide margin
    (docs/testbed.md has the measured accuracy); a bundle that lost its training, or a processor or prompt layout
    that no longer matches it, falls to the prior."""
    from hf_tokenprune_testbed import scenes, tasks

    answers_per_kind = {"attribute": tasks.COLOURS, "identity": tasks.SHAPES, "count": tasks.COUNT_WORDS}
    answers_per_kind.update(existence=("yes", "no"), reading=tasks.WORDS)
    kinds = scenes.KINDS if BUNDLED_TASK == "v2" else tasks.KINDS
    prior = sum(1 / len(answers_per_kind[kind]) for kind in kinds) / len(kinds)
    base, processor = load_testbed()
    examples = task_split("test", 300, BUNDLED_TASK)
    answers, _, _ = predict(base, processor, [e.image for e in examples], [e.question for e in examples])
    accuracy = sum(a == e.answer for a, e in zip(answers, examples, strict=True)) / len(examples)
    assert accuracy > prior + (0.5 if BUNDLED_TASK == "v2" else 0.2), (accuracy, prior)


def test_demo_matches_the_library_path_and_draws_the_kept_tokens(tmp_path, capsys):
    output = tmp_path / "demo.png"
    assert main(["demo", "--budget", "0.2", "--seed", "3", "--output", str(output), "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in printed.splitlines() if ": " in line)

    example = task_split("test", 4, BUNDLED_TASK)[3]
    base, processor = load_testbed()
    pruned = get_pruned_model(base, DEFAULT_ADAPTERS["visionselector"])
    answers, kept, total = predict(pruned, processor, [example.image], [example.question], prune_budget=0.2)
    unpruned, _, _ = predict(base, processor, [example.image], [example.question])
    assert lines["question (" + example.kind + ")"] == example.question
    assert lines["visionselector at budget 0.2"] == answers[0]
    assert lines["unpruned answer"] == unpruned[0]
    assert lines["visual tokens kept"] == f"{tokens_to_keep(0.2, total[0])} of {total[0]}" == f"{kept[0]} of {total[0]}"
    rows, cols = token_grid(*example.image.size, image_processor=processor.image_processor)
    with Image.open(output) as image:  # the library's overlay of the model's token grid (space.kept_token_overlay)
        assert image.size[0] * rows == image.size[1] * cols and image.size[0] % cols == 0
    assert "speed-up" in lines["time to first token"]
    assert "smaller" in lines["KV cache after the answer"]


def test_demo_rejects_bad_arguments_before_loading(monkeypatch):
    monkeypatch.setattr("hf_tokenprune_testbed.demo.load_testbed", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="budget"):
        main(["demo", "--budget", "0"])
    with pytest.raises(ValueError, match="method"):
        main(["demo", "--method", "nope"])
    with pytest.raises(ValueError, match="kind"):
        main(["demo", "--kind", "nope"])


def test_bundled_adapter_loads_by_path_through_remote_code(hub_layout_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(hub_layout_dir / "autoselect", trust_remote_code=True)
    base, _ = load_testbed()
    for name, tensor in base.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert Path(model.token_prune_config.base_model_name_or_path) == Path("../base")


def test_vision_pretraining_labels_name_the_object_under_each_cell(examples):
    """Oracle: the resized image's pixel at each labelled cell's object centre, and the scene's own objects."""
    from hf_tokenprune_testbed.pipeline import token_labels
    from hf_tokenprune_testbed.tasks import COLOURS, SHAPES, WORDS

    for example in examples:
        width, height = example.image.size
        rows, cols = token_grid(width, height)
        labels = token_labels(example).reshape(rows, cols, 3)
        assert int((labels[..., 0] > 0).sum()) >= len(example.objects)  # every object labels at least its centre cell
        for item in example.objects:
            centre_x, centre_y = (item.box[0] + item.box[2]) / 2, (item.box[1] + item.box[3]) / 2
            row, col = int(centre_y * rows / height), int(centre_x * cols / width)
            colour, shape, word = labels[row, col].tolist()
            assert COLOURS[colour - 1] == item.colour
            assert shape == (len(SHAPES) + 1 if item.word else SHAPES.index(item.shape) + 1)
            assert word == (WORDS.index(item.word) + 1 if item.word else 0)
        covered = torch.zeros(rows, cols, dtype=torch.bool)
        for item in example.objects:
            x0, y0 = int(item.box[0] * cols / width), int(item.box[1] * rows / height)
            x1, y1 = int((item.box[2] - 1) * cols / width), int((item.box[3] - 1) * rows / height)
            covered[y0 : y1 + 1, x0 : x1 + 1] = True
        assert not (labels[..., 0] > 0)[~covered].any(), "a label outside every object's cells"


def test_bundle_writes_only_what_training_produced_and_refuses_site_packages(hub_layout_dir, tmp_path):
    """Oracle: the committed bundle, byte for byte, written back from a run folder laid out as `reproduce` leaves it
    (Hub-layout adapters with remote code and cards, a base with training logs and trainer folders)."""
    import shutil
    import sysconfig

    from hf_tokenprune_testbed.bundled import bundle

    run = tmp_path / "run"
    shutil.copytree(hub_layout_dir / "base", run / "base")
    (run / "base" / "training_log.json").write_text("[]")
    (run / "base" / "trainer").mkdir()
    adapters = {method: hub_layout_dir / method for method in BUNDLED_METHODS}
    target = tmp_path / "default_model"
    (target / "autoselect").mkdir(parents=True)
    (target / "autoselect" / "stale.py").write_text("")  # a folder is replaced whole, not merged into
    assert bundle(run, adapters, target) == target.resolve()
    written = sorted(path.relative_to(target) for path in target.rglob("*") if path.is_file())
    committed = sorted(path.relative_to(DEFAULT_DIR) for path in DEFAULT_DIR.rglob("*") if path.is_file())
    assert written == committed
    assert all((target / name).read_bytes() == (DEFAULT_DIR / name).read_bytes() for name in committed)
    assert sorted(path.name for path in target.iterdir()) == sorted(["base", *BUNDLED_METHODS])  # nothing staged
    with pytest.raises(ValueError, match="site-packages"):
        bundle(run, adapters, Path(sysconfig.get_paths()["purelib"]) / "hf_tokenprune_testbed" / "default_model")


# ----------------------------------------------------------------------------- VLM training stages
def test_prompts_ask_the_question_before_and_after_the_image_in_training_and_inference(examples):
    """The inference prompt (`build_batch`) and the training record (rendered by the training collator) agree:
    question tokens, the visual tokens, the question again; the training sequence is the inference prompt plus the
    answer."""
    from hf_tokenprune.training.data import TokenPruneDataCollator
    from hf_tokenprune_testbed.pipeline import example_record

    processor = make_testbed_processor()
    example = examples[0]
    prompt = build_batch(processor, [example.image], [example.question])["input_ids"][0]
    trained = TokenPruneDataCollator(processor)([example_record(example)])
    ids = trained["input_ids"][0]
    assert torch.equal(ids[: len(prompt)], prompt)
    answer = ids[len(prompt) :][trained["labels"][0][len(prompt) :] != -100]
    assert processor.tokenizer.decode(answer, skip_special_tokens=True).split() == [example.answer]
    image_positions = (prompt == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).nonzero()
    question_ids = processor.tokenizer(example.question, add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(prompt)) if prompt[i : i + len(question_ids)].tolist() == question_ids]
    assert len(starts) == 2
    assert starts[0] + len(question_ids) <= int(image_positions.min()) < int(image_positions.max()) < starts[1]


@pytest.mark.parametrize("kind", ["attribute", "identity", "count", "existence", "caption"])
def test_token_relevance_marks_the_objects_the_prompt_names(kind):
    """Oracle: the generator's evidence boxes (`evidence_token_mask`) and answers. A question's relevant tokens are
    its evidence, except POPE-style "no" (the evidence there is the near misses; nothing is relevant); a count
    question has as many as its answer; a caption's are every object and no clutter."""
    from hf_tokenprune_testbed.model import CAPTION_PROMPT
    from hf_tokenprune_testbed.pipeline import GeneratedExamples, GeneratedRecords, token_relevance
    from hf_tokenprune_testbed.tasks import COUNT_WORDS, evidence_token_mask

    examples = [e for e in task_split("train", 40) if kind == "caption" or e.kind == kind][:8]
    for example in examples:
        relevance = token_relevance(example, CAPTION_PROMPT if kind == "caption" else example.question)
        rows, cols = example.grid
        assert relevance.shape == (rows * cols,) and set(relevance.tolist()) <= {0.0, 1.0}
        if kind == "caption":
            objects = [item for item in example.objects if not item.clutter]
            assert relevance.sum() == len(objects)
            cells = {(item.box[1] // 16) * cols + item.box[0] // 16 for item in objects}
            assert set(relevance.nonzero()[0].tolist()) == cells
        elif kind == "existence" and example.answer == "no":
            assert relevance.sum() == 0 and evidence_token_mask(example).sum() > 0
        else:
            assert (relevance > 0).tolist() == evidence_token_mask(example).tolist()
            if kind == "count":
                assert relevance.sum() == COUNT_WORDS.index(example.answer) + 1
    assert token_relevance(make_split("train", 1)[0], "what colour is the star") is None  # v1: no grid
    caption, question = GeneratedRecords("train", 2, caption_every=2)[0], GeneratedRecords("train", 2)[0]
    example = GeneratedExamples("train", 1)[0]
    assert caption["token_relevance"].tolist() == token_relevance(example, CAPTION_PROMPT).tolist()
    assert question["token_relevance"].tolist() == token_relevance(example, example.question).tolist()


def test_relevance_trainer_adds_the_class_balanced_yes_no_loss_read_at_its_layer():
    """Oracle: the auxiliary term recomputed by hand from a forward hook on decoder layer `relevance_layer - 1`
    (its output is `hidden_states[relevance_layer]`); weight 0 gives the stock loss."""
    from transformers import TrainingArguments

    from hf_tokenprune_testbed.model import new_testbed_model
    from hf_tokenprune_testbed.pipeline import CachedVisualTokens, GeneratedRecords, RelevanceTrainer, collate_cached

    model, processor = new_testbed_model(0)
    records = GeneratedRecords("train", 4, caption_every=2)
    items = CachedVisualTokens(model, processor, records, batch_size=2, num_workers=0)
    batch = collate_cached([items[i] for i in range(4)], processor.tokenizer.pad_token_id)
    yes_no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    model.eval()
    captured = {}
    handle = model.model.language_model.layers[1].register_forward_hook(
        lambda module, inputs, output: captured.update(hidden=output[0] if isinstance(output, tuple) else output)
    )
    with torch.no_grad():
        stock = model(**{k: v for k, v in batch.items() if k != "token_relevance"}).loss
        trainer = RelevanceTrainer(model=model, args=args, relevance_weight=0.5, relevance_layer=2, yes_no_ids=yes_no)
        total = trainer.compute_loss(model, dict(batch))
        plain = RelevanceTrainer(model=model, args=args, relevance_weight=0.0, yes_no_ids=yes_no)
        unweighted = plain.compute_loss(model, dict(batch))
    handle.remove()
    visual = batch["input_ids"] == model.config.image_token_id
    logits = model.lm_head(model.model.language_model.norm(captured["hidden"][visual]))[:, yes_no]
    target = batch["token_relevance"][batch["token_relevance"] >= 0]
    assert target.numel() == visual.sum() and target.sum() > 0
    nll = -torch.log_softmax(logits, -1)
    positive, negative = nll[target > 0.5, 0].mean(), nll[target < 0.5, 1].mean()
    torch.testing.assert_close(total, stock + 0.5 * (positive + negative) / 2)
    torch.testing.assert_close(unweighted, stock)


def test_match_feature_scale_rescales_visual_features_to_the_word_embedding_norm(examples):
    """Oracle: the tower's features before the call, times the returned factor; norms against the embeddings."""
    from hf_tokenprune_testbed.model import new_testbed_model
    from hf_tokenprune_testbed.pipeline import match_feature_scale

    model, processor = new_testbed_model(0)
    batch = processor.image_processor([e.image for e in examples], return_tensors="pt")
    with torch.no_grad():
        model.model.visual.merger.mlp[-1].weight.mul_(50)  # as stage 1 leaves them: far longer than words
        before = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        factor = match_feature_scale(model, processor)
        after = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    torch.testing.assert_close(after, before * factor, rtol=1e-4, atol=1e-6)
    words = model.get_input_embeddings().weight.norm(dim=-1).mean()
    assert after.norm(dim=-1).mean() == pytest.approx(words.item(), rel=0.25)  # other images than the call's


def test_vision_pretraining_loss_weights_object_cells_on_their_own(examples):
    """Oracle: cross-entropy recomputed per label group as (all cells) + (cells that show something)."""
    from hf_tokenprune_testbed.model import new_testbed_model
    from hf_tokenprune_testbed.pipeline import VisionPretraining, VisionPretrainingCollator

    model, processor = new_testbed_model(0)
    wrapper = VisionPretraining(model, processor.tokenizer)
    batch = VisionPretrainingCollator(processor)(examples[:3])
    loss = wrapper(**batch)["loss"]
    with torch.no_grad():
        features = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    expected = 0.0
    for group, logits in enumerate(wrapper.group_logits(features)):
        labels = batch["token_labels"][:, group]
        shown = labels > 0
        expected += torch.nn.functional.cross_entropy(logits, labels)
        expected += torch.nn.functional.cross_entropy(logits[shown], labels[shown])
    torch.testing.assert_close(loss.detach(), expected.detach())


@pytest.mark.parametrize("task", ["v1", "v2"])
def test_vision_pretraining_classes_are_the_language_models_word_embeddings(task):
    """Oracle: cosines against the embedding rows of the class names, looked up through the tokenizer by hand; one
    optimiser step moves exactly those rows of the embedding table (and the tower), nothing else of the LM."""
    from hf_tokenprune_testbed.model import new_testbed_model
    from hf_tokenprune_testbed.pipeline import VisionPretraining, VisionPretrainingCollator
    from hf_tokenprune_testbed.scenes import label_names
    from hf_tokenprune_testbed.tasks import COLOURS

    examples = task_split("validation", 4, task)
    model, processor = new_testbed_model(0)
    wrapper = VisionPretraining(model, processor.tokenizer, task)
    batch = VisionPretrainingCollator(processor)(examples)
    table = model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        features = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        logits = wrapper.group_logits(features)
    unit = torch.nn.functional.normalize(features, dim=-1)
    names = label_names(task)
    for group, words in enumerate(names):
        assert logits[group].shape == (len(features), len(words) + 1)
        for k, word in enumerate(words, start=1):
            row = table[processor.tokenizer.encode(word, add_special_tokens=False)[0]]
            expected = wrapper.scale.detach() * unit @ (row / row.norm())
            torch.testing.assert_close(logits[group][:, k], expected, rtol=1e-4, atol=1e-5)

    others = model.model.language_model.layers[0].mlp.down_proj.weight.detach().clone()
    optimiser = torch.optim.SGD(wrapper.parameters(), lr=1.0)
    wrapper(**batch)["loss"].backward()
    optimiser.step()
    moved = (model.get_input_embeddings().weight.detach() != table).any(dim=-1).nonzero().flatten().tolist()
    class_ids = {processor.tokenizer.convert_tokens_to_ids(word) for words in names for word in words}
    assert set(moved) <= class_ids and len(moved) > len(COLOURS)  # not every word occurs in 4 images
    assert torch.equal(model.model.language_model.layers[0].mlp.down_proj.weight, others)


def test_cached_visual_tokens_give_the_stock_forward_the_same_loss_and_gradients():
    """Oracle: the stock forward on the records' pixels through the training collator."""
    from hf_tokenprune.training.data import TokenPruneDataCollator
    from hf_tokenprune_testbed.model import new_testbed_model
    from hf_tokenprune_testbed.pipeline import CachedVisualTokens, GeneratedRecords, collate_cached

    model, processor = new_testbed_model(0)
    records = GeneratedRecords("train", 5, caption_every=2)  # captions and questions: different lengths, padding
    items = CachedVisualTokens(model, processor, records, batch_size=2, num_workers=0)
    assert len(items) == 5
    cached = collate_cached([items[i] for i in range(5)], processor.tokenizer.pad_token_id)
    assert cached.pop("token_relevance").shape[0] == 5  # `RelevanceTrainer`'s, not the stock forward's
    stock = TokenPruneDataCollator(processor)([records[i] for i in range(5)])
    gradients = []
    for batch in (cached, stock):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        gradients.append((loss.detach(), model.model.language_model.layers[0].self_attn.q_proj.weight.grad.clone()))
    torch.testing.assert_close(gradients[0][0], gradients[1][0])
    torch.testing.assert_close(gradients[0][1], gradients[1][1])


def test_train_vlm_on_cached_visual_tokens_trains_the_language_model_only_for_epochs(tmp_path):
    from hf_tokenprune_testbed.model import new_testbed_model
    from hf_tokenprune_testbed.pipeline import train_vlm

    start, _ = new_testbed_model(0)
    model, _ = train_vlm(tmp_path / "vlm", steps=3, batch_size=2, learning_rate=1e-2, seed=0, cached_records=2)
    log = json.loads((tmp_path / "vlm" / "training_log.json").read_text())
    assert log[-1]["step"] == 3 and log[-1]["epoch"] == pytest.approx(3.0)  # 2 records, 1 per epoch of batch 2
    before, after = start.state_dict(), model.state_dict()
    for name in before:
        if name.startswith("model.visual."):
            assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in before if "language_model" in n)


@pytest.mark.parametrize(
    "schedule",
    [
        "1000",
        "1000:",
        "x:1e-3",
        "0:1e-3",
        "10:-1",
        "10:1e-3,",
        "10:1e-3:full:0",
        "10:1e-3:full:8:-1",
        "10:1e-3:full:8:x",
        "10:1e-3:full:8:1:9",
    ],
)
def test_reproduce_rejects_a_bad_vlm_schedule_before_training(tmp_path, schedule):
    with pytest.raises(ValueError, match="vlm_schedule"):
        run_reproduce(ReproduceArguments(output=str(tmp_path / "run"), vlm_schedule=schedule, threads=1))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vlm_cached_records", 0),
        ("eval_tasks", "v2,v3"),
        ("vlm_relevance_layer", 0),
        ("vlm_relevance_layer", 5),
        ("vlm_layers", 1),
        ("vlm_width", 100),
        ("vlm_width", 0),
    ],
)
def test_reproduce_rejects_bad_arguments_before_training(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        run_reproduce(ReproduceArguments(output=str(tmp_path / "run"), threads=1, **{field: value}))
    assert not (tmp_path / "run").exists()


def test_selector_records_hold_captions_per_the_papers(tmp_path):
    """Issue 15, defect 5: the selector stage writes caption records (papers 002 / 004 train on dense captions) when
    the recipe's VLM learned to caption, none when it did not; they load through the library's loader and the
    collator labels the whole caption."""
    from hf_tokenprune.training import TokenPruneDataCollator, load_conversation_records
    from hf_tokenprune_testbed.model import CAPTION_PROMPT, load_testbed
    from hf_tokenprune_testbed.pipeline import (
        SELECTOR_CAPTION_EVERY,
        caption_text,
        selector_caption_every,
        write_records,
    )

    assert SELECTOR_CAPTION_EVERY["autoselect"] == 1 and SELECTOR_CAPTION_EVERY["visionselector"] >= 1
    for method, every in SELECTOR_CAPTION_EVERY.items():
        assert selector_caption_every(method, ReproduceArguments(output="x", vlm_caption_every=4)) == every
        assert selector_caption_every(method, ReproduceArguments(output="x", vlm_caption_every=0)) == 0
    path = write_records("train", 4, tmp_path, caption_every=2)
    raw = json.loads(path.read_text())
    assert [record["kind"] == "caption" for record in raw] == [True, False, True, False]
    examples = task_split("train", 4)
    assert raw[0]["conversations"][0]["value"].startswith(CAPTION_PROMPT)
    assert (
        raw[0]["conversations"][1]["value"] == caption_text(examples[0]) and len(caption_text(examples[0]).split()) >= 4
    )
    assert raw[1]["conversations"][1]["value"] == examples[1].answer
    records = load_conversation_records(path, image_folder=tmp_path / "images")
    _, processor = load_testbed()
    batch = TokenPruneDataCollator(processor, image_folder=tmp_path / "images")([records[0]])
    labelled = batch["labels"][batch["labels"] != -100]
    words = processor.tokenizer.decode(labelled, skip_special_tokens=True).split()
    assert words == caption_text(examples[0]).split()


def test_gather_loss_is_the_attention_mass_on_the_relevant_tokens_from_the_answering_position():
    """Oracle: causal attention that is uniform over the past, where head 0's mass on the relevant tokens from the
    position before the first label is (relevant tokens) / (that position + 1); records without a relevant token
    (a POPE "no") do not count."""
    from hf_tokenprune_testbed.pipeline import RelevanceTrainer

    image = 7
    input_ids = torch.tensor([[1, image, image, image, 2, 3, 4, 0], [1, 2, image, image, 3, 4, 5, 6]])
    labels = torch.full_like(input_ids, -100)
    labels[0, 5:7] = 9  # first answer label at 5: predicted from position 4
    labels[1, 6:] = 9  # predicted from position 5
    relevance = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    steps = torch.arange(8)
    causal = (steps[None, :] <= steps[:, None]).float()
    attentions = (causal / causal.sum(-1, keepdim=True)).expand(2, 3, 8, 8)
    loss = RelevanceTrainer._gather_loss(input_ids, labels, relevance, attentions, image)
    torch.testing.assert_close(loss, -torch.log(torch.tensor(2 / 5 + 1e-6)))
    relevance[1, 1] = 1.0  # now the second record counts too: one relevant token seen from position 5
    loss = RelevanceTrainer._gather_loss(input_ids, labels, relevance, attentions, image)
    torch.testing.assert_close(
        loss, -(torch.log(torch.tensor(2 / 5 + 1e-6)) + torch.log(torch.tensor(1 / 6 + 1e-6))) / 2
    )
    assert RelevanceTrainer._gather_loss(input_ids, labels, torch.zeros(2, 3), attentions, image) is None


def test_count_loss_is_zero_exactly_when_head_1_is_uniform_over_the_matches_and_its_own_position():
    """Oracle: attention built by hand. Head 1 uniform over {relevant tokens, the answering position} gives 0 (its
    weight on that position is 1 / (matches + 1)); uniform over the whole causal past gives the cross-entropy against
    that target minus its minimum, computed here in closed form; head 0 is not read."""
    from hf_tokenprune_testbed.pipeline import RelevanceTrainer

    image = 7
    input_ids = torch.tensor([[1, image, image, image, 2, 3, 4, 0]])
    labels = torch.full_like(input_ids, -100)
    labels[0, 5:7] = 9  # answered from position 4
    relevance = torch.tensor([[1.0, 0.0, 1.0]])  # visual positions 1 and 3
    attentions = torch.zeros(1, 3, 8, 8)
    attentions[0, 1, 4, [1, 3, 4]] = 1 / 3
    attentions[0, 0, 4, 0] = 1.0  # head 0 elsewhere: not read
    torch.testing.assert_close(
        RelevanceTrainer._count_loss(input_ids, labels, relevance, attentions, image),
        torch.tensor(0.0),
        atol=1e-5,
        rtol=0,
    )
    attentions[0, 1, 4] = 0.0
    attentions[0, 1, 4, :5] = 1 / 5  # uniform over the causal past: each target weight is 3/5 of its goal
    torch.testing.assert_close(
        RelevanceTrainer._count_loss(input_ids, labels, relevance, attentions, image),
        -torch.log(torch.tensor(3 / 5 + 1e-6)),
    )
    assert RelevanceTrainer._count_loss(input_ids, labels, torch.zeros(1, 3), attentions, image) is None


@pytest.mark.parametrize("method", BUNDLED_METHODS)
def test_bundled_cards_snippet_runs_as_pasted_and_answers_as_the_library(hub_layout_dir, method, monkeypatch, capsys):
    """The card's Python block, executed as it stands (the Hub layout it loads is this test's), prints what the
    library path answers at the same budget; the card names no path of this machine and no relative base model."""
    import re

    import hf_tokenprune_testbed.bundled as bundled_module

    card = (hub_layout_dir / method / "README.md").read_text()
    metadata = card.split("---")[1]
    assert "base_model" not in metadata and "../base" not in card and str(hub_layout_dir) not in card
    assert str(Path.home()) not in card and "/tmp" not in card and "/work" not in card
    results = json.loads((DEFAULT_ADAPTERS[method] / "eval_results.json").read_text())  # the bundled task's table
    rows = [line for line in card.split("## Results")[1].splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(results["results"])  # header + one row per (method, budget) evaluated
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.setattr(bundled_module, "default_cache_dir", lambda: hub_layout_dir.parent)
    exec(compile(snippet, "card-snippet", "exec"), {})
    printed = capsys.readouterr().out.strip()

    example = task_split("test", 1, BUNDLED_TASK)[0]
    base, processor = load_testbed()
    pruned = get_pruned_model(base, DEFAULT_ADAPTERS[method])
    answers, _, _ = predict(pruned, processor, [example.image], [example.question], prune_budget=0.1)
    assert printed == f"{example.question} -> {answers[0]} (expected: {example.answer})"
