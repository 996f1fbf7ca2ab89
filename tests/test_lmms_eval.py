"""The lmms-eval plugin, through the real `lmms-eval` CLI on the testbed task exported to disk (no Hub access).

Oracles: `hf-tokenprune eval`'s accuracy on the same examples and budget (`hf_tokenprune_testbed.evaluate.evaluate`),
`tokens_to_keep` for the kept-token counts the plugin logs per request.

lmms-eval is installed by `.ci/run` (`pip install --no-deps lmms-eval==0.7.3`; see the `lmms` extra for why). Under CI
(the env var CI set) a missing lmms-eval fails these tests; elsewhere it skips them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from hf_tokenprune.modeling.pruning import tokens_to_keep

REPO_ROOT = Path(__file__).resolve().parents[1]
LIMIT, BUDGET, METHOD, BATCH_SIZE = 16, 0.2, "visionselector", 8

if importlib.util.find_spec("lmms_eval") is None:
    if os.environ.get("CI"):
        raise ImportError(
            "lmms-eval is not installed; .ci/run installs it with `pip install --no-deps lmms-eval==0.7.3`"
        )
    pytest.skip("lmms-eval is not installed (CI installs it; see .ci/run)", allow_module_level=True)


def lmms_eval_command() -> list[str]:
    """The `lmms-eval` console script beside this interpreter (the one pip installed), else on PATH."""
    beside = Path(sys.executable).with_name("lmms-eval")
    found = str(beside) if beside.is_file() else shutil.which("lmms-eval")
    assert found, "the lmms-eval console script is not installed"
    return [found]


@pytest.fixture(scope="module")
def lmms_run(tmp_path_factory):
    """Export the test split's first LIMIT examples, run the lmms-eval CLI on them with the bundled visionselector
    repo, and return (results JSON, per-request log records)."""
    from hf_tokenprune_testbed.bundled import hub_adapter
    from hf_tokenprune_testbed.lmms_eval_task import TASK_NAME, export_task

    folder = tmp_path_factory.mktemp("lmms")
    task_yaml = export_task(folder / "task", "test", LIMIT)
    request_log = folder / "requests.jsonl"
    model_args = (
        f"pretrained={hub_adapter(METHOD)},prune_budget={BUDGET},prune_method={METHOD},batch_size={BATCH_SIZE},"
        f"device=cpu,request_log={request_log}"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(folder / "hf_home"),  # lmms-eval's dataset cache stays inside the test's folder
        # The checkout under test (not some other copy) is what lmms-eval imports; the entry point comes from the install.
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    command = [
        *lmms_eval_command(),
        "--model",
        "hf_tokenprune",
        "--model_args",
        model_args,
        "--tasks",
        TASK_NAME,
        "--include_path",
        str(task_yaml.parent),
        "--limit",
        str(LIMIT),
        "--output_path",
        str(folder / "results"),
    ]
    completed = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    (results_file,) = (folder / "results").rglob("*_results.json")
    records = [json.loads(line) for line in request_log.read_text().splitlines()]
    return json.loads(results_file.read_text()), records


def test_lmms_eval_finds_the_plugin_through_its_entry_point():
    from lmms_eval.models import get_model

    from hf_tokenprune.integrations.lmms_eval import HFTokenPrune

    names = [entry.name for entry in entry_points(group="lmms_eval.models")]
    assert "hf_tokenprune" in names, "reinstall the package (pip install -e .) so its entry points are registered"
    assert get_model("hf_tokenprune") is HFTokenPrune


def test_lmms_eval_accuracy_equals_hf_tokenprune_eval(lmms_run):
    from hf_tokenprune_testbed.evaluate import evaluate
    from hf_tokenprune_testbed.model import BUNDLED_TASK, DEFAULT_ADAPTERS, load_testbed
    from hf_tokenprune_testbed.scenes import task_split

    results, records = lmms_run
    base, processor = load_testbed()
    examples = task_split("test", LIMIT, BUNDLED_TASK)  # what the exported task holds
    ours = evaluate(base, processor, examples, [METHOD], [BUDGET], DEFAULT_ADAPTERS, batch_size=32, progress=False)
    (row,) = ours["results"]
    assert results["results"]["testbed_vqa"]["exact_match,none"] == pytest.approx(row["accuracy"], abs=1e-12)
    # The same images reach the model, and the same number of their tokens is kept.
    assert sum(record["visual_tokens"] for record in records) / LIMIT == pytest.approx(ours["visual_tokens"])
    assert sum(record["kept_visual_tokens"] for record in records) / LIMIT == pytest.approx(row["kept_tokens"])


def test_lmms_eval_run_logs_kept_tokens_and_time_to_first_token_per_request(lmms_run):
    results, records = lmms_run
    assert sorted(record["doc_id"] for record in records) == list(range(LIMIT))
    for record in records:
        assert record["kept_visual_tokens"] == tokens_to_keep(BUDGET, record["visual_tokens"])
        assert math.isfinite(record["time_to_first_token_s"]) and record["time_to_first_token_s"] > 0
        assert record["batch_size"] == BATCH_SIZE
    throughput = results["throughput"]
    assert throughput["avg_kept_visual_tokens"] == pytest.approx(
        sum(record["kept_visual_tokens"] for record in records) / LIMIT
    )
    assert throughput["avg_time_to_first_token_s"] > 0


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ("pretrained=x,prune_budget=0", "prune_budget"),
        ("pretrained=x,prune_budget=1.5", "prune_budget"),
        ("pretrained=x,prune_method=nosuch", "prune_method"),
        ("pretrained=x,batch_size=auto", "batch_size"),
        ("pretrained=x,max_new_tokens=0", "max_new_tokens"),
    ],
)
def test_bad_model_args_fail_before_loading_naming_the_argument(model_args, message):
    from hf_tokenprune.integrations.lmms_eval import HFTokenPrune

    with pytest.raises(ValueError, match=message):
        HFTokenPrune.create_from_arg_string(model_args, {"batch_size": 1, "device": None})


def test_model_args_win_over_the_cli_defaults_lmms_eval_passes(monkeypatch):
    from hf_tokenprune.integrations import lmms_eval as plugin

    seen = {}
    monkeypatch.setattr(plugin.HFTokenPrune, "__init__", lambda self, **kwargs: seen.update(kwargs))
    plugin.HFTokenPrune.create_from_arg_string("pretrained=x,batch_size=8", {"batch_size": "1", "device": None})
    assert seen == {"pretrained": "x", "batch_size": 8}


def test_stop_strings_cut_the_answer():
    from hf_tokenprune.integrations.lmms_eval import truncate_at_stop

    assert truncate_at_stop("red\n\nblue", ["\n\n"]) == "red"
    assert truncate_at_stop("red", []) == "red"


def test_generate_until_batches_requests_with_several_images_as_one_by_one(tmp_path):
    """Two images in one request, one in another: per-image budgets, and a batch answers as runs one by one do."""
    from lmms_eval.api.instance import Instance

    from hf_tokenprune.integrations.lmms_eval import HFTokenPrune
    from hf_tokenprune_testbed.bundled import hub_adapter
    from hf_tokenprune_testbed.tasks import make_split, token_grid

    examples = make_split("test", 3)
    docs = [{"images": [examples[0].image, examples[1].image]}, {"images": [examples[2].image]}]

    def doc_to_messages(doc):
        content = [{"type": "text", "text": examples[0].question}]
        content += [{"type": "image", "url": image} for image in doc["images"]]
        return [{"role": "user", "content": content}]

    requests = [
        Instance(
            "generate_until",
            ("", doc_to_messages, {"max_new_tokens": 2}, doc_id, "multi", "test"),
            0,
            metadata={"task": "multi", "doc_id": doc_id, "repeats": 1},
        )
        for doc_id in range(len(docs))
    ]
    answers = {}
    for batch_size in (1, 2):
        log = tmp_path / f"requests_{batch_size}.jsonl"
        model = HFTokenPrune(
            pretrained=str(hub_adapter(METHOD)), prune_budget=BUDGET, batch_size=batch_size, request_log=str(log)
        )
        model.task_dict = {"multi": {"test": docs}}
        answers[batch_size] = [answer.text for answer in model.generate_until(requests)]
        records = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda r: r["doc_id"])
        for record, doc in zip(records, docs, strict=True):
            grids = [
                token_grid(*image.size, image_processor=model.processor.image_processor) for image in doc["images"]
            ]
            per_image = [math.prod(grid) for grid in grids]
            assert record["visual_tokens"] == sum(per_image)
            assert record["kept_visual_tokens"] == sum(tokens_to_keep(BUDGET, count) for count in per_image)
    assert answers[2] == answers[1]
