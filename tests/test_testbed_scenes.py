"""Task v2 (`scenes.py`): determinism, geometry, balance, clutter that no question names, answers re-derived by an
independent oracle from the scene description and from the pixels, and the generator's knobs."""

import re
from collections import Counter

import numpy as np
import pytest

from hf_tokenprune_testbed.model import testbed_processor as make_processor
from hf_tokenprune_testbed.pipeline import caption_text, token_labels
from hf_tokenprune_testbed.scenes import (
    CELL,
    CLUTTER_KINDS,
    KINDS,
    SceneSpec,
    label_names,
    make_example,
    task_example,
    task_split,
)
from hf_tokenprune_testbed.tasks import COLOUR_RGB, COLOURS, SHAPES, evidence_token_mask

N_SEEDS = 240  # 60 per kind
NUMBERS = ("one", "two", "three", "four")
PLURAL_TO_SHAPE = {shape + ("es" if shape.endswith("s") else "s"): shape for shape in SHAPES}
PATTERNS = {
    "attribute": re.compile(r"what colour is the (?P<shape>\w+)"),
    "identity": re.compile(r"which shape is (?P<colour>\w+)"),
    "count": re.compile(r"how many (?P<plural>\w+) are there"),
    "existence": re.compile(r"is there a (?P<colour>\w+) (?P<shape>\w+)"),
}


@pytest.fixture(scope="module")
def examples():
    return [make_example(seed) for seed in range(N_SEEDS)]


def oracle_answer(example, objects):
    """The answer from the question's words and a list of (shape, colour) objects; clutter must not be in the list."""
    match = PATTERNS[example.kind].fullmatch(example.question)
    assert match, example.question
    if example.kind == "attribute":
        colours = [colour for shape, colour in objects if shape == match["shape"]]
        assert len(colours) == 1
        return colours[0]
    if example.kind == "identity":
        shapes = [shape for shape, colour in objects if colour == match["colour"]]
        assert len(shapes) == 1
        return shapes[0]
    if example.kind == "count":
        return NUMBERS[sum(shape == PLURAL_TO_SHAPE[match["plural"]] for shape, _ in objects) - 1]
    return "yes" if (match["shape"], match["colour"]) in objects else "no"


def test_same_seed_same_example_and_v1_v2_differ():
    first, second = make_example(17), make_example(17)
    assert first.image.tobytes() == second.image.tobytes()
    assert (first.question, first.answer, first.objects) == (second.question, second.answer, second.objects)
    assert task_example(17, "v2").image.tobytes() == first.image.tobytes()
    assert task_example(17, "v1").grid is None  # the first task, drawn by tasks.make_example


def test_kinds_and_answers_are_balanced_over_consecutive_seeds(examples):
    kinds = Counter(example.kind for example in examples)
    assert kinds == {kind: N_SEEDS // len(KINDS) for kind in KINDS}
    for kind, options in (("attribute", COLOURS), ("identity", SHAPES), ("count", NUMBERS), ("existence", "yes no")):
        answers = Counter(example.answer for example in examples if example.kind == kind)
        options = options.split() if isinstance(options, str) else options
        assert set(answers) == set(options)
        assert max(answers.values()) - min(answers.values()) <= 1


def test_answer_follows_from_the_objects_and_clutter_is_never_named(examples):
    for example in examples:
        objects = [(item.shape, item.colour) for item in example.objects if not item.clutter]
        assert oracle_answer(example, objects) == example.answer
        clutter = [item for item in example.objects if item.clutter]
        assert all(item.shape in CLUTTER_KINDS for item in clutter)
        assert not set(example.question.split()) & set(CLUTTER_KINDS)


def test_answer_read_back_from_the_pixels(examples):
    """Oracle from pixels: which cells hold a saturated colour, and which colour, matches the scene description."""
    for example in examples[:40]:
        pixels = np.asarray(example.image).astype(int)
        rows, cols = example.grid
        assert pixels.shape == (rows * CELL, cols * CELL, 3)
        drawn = {(item.box[1] // CELL, item.box[0] // CELL): item.colour for item in example.objects}
        for row in range(rows):
            for col in range(cols):
                cell = pixels[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL].reshape(-1, 3)
                saturated = cell[(cell.max(1) - cell.min(1)) > 60]
                if (row, col) not in drawn:
                    assert len(saturated) == 0, (example.seed, row, col)
                    continue
                distances = {
                    colour: np.abs(saturated - np.array(COLOUR_RGB[colour])).sum(1).mean() for colour in COLOURS
                }
                assert min(distances, key=distances.get) == drawn[row, col]


def test_evidence_is_small_and_is_the_cells_of_the_answer_objects(examples):
    fractions = []
    for example in examples:
        mask = evidence_token_mask(example).reshape(example.grid)
        cells = {(box[1] // CELL, box[0] // CELL) for box in example.evidence}
        assert {tuple(cell) for cell in np.argwhere(mask)} == cells
        fractions.append(mask.mean())
    assert max(fractions) <= 0.10
    tokens = [rows * cols for rows, cols in (example.grid for example in examples)]
    assert 144 <= min(tokens) and max(tokens) <= 324  # a few hundred visual tokens per image


def test_clutter_is_as_salient_and_varied_as_the_objects(examples):
    clutter = [(item.shape, item.colour) for example in examples for item in example.objects if item.clutter]
    objects = [(item.shape, item.colour) for example in examples for item in example.objects if not item.clutter]
    assert len(clutter) > 5 * len(objects)  # most distinctive cells are clutter
    assert len(set(clutter)) == len(CLUTTER_KINDS) * len(COLOURS)  # every glyph in every colour


def test_processor_keeps_v2_images_on_the_token_grid(examples):
    processor = make_processor()
    for example in examples[:8]:
        grid = processor.image_processor([example.image], return_tensors="pt")["image_grid_thw"][0]
        assert (int(grid[1]) // 2, int(grid[2]) // 2) == example.grid


def test_token_labels_name_each_cells_glyph(examples):
    colours, kinds = label_names("v2")
    for example in examples[:20]:
        labels = token_labels(example).reshape(*example.grid, 2)
        for item in example.objects:
            row, col = item.box[1] // CELL, item.box[0] // CELL
            assert colours[labels[row, col, 0] - 1] == item.colour and kinds[labels[row, col, 1] - 1] == item.shape
        assert int((labels[..., 0] > 0).sum()) == len(example.objects)


def test_captions_name_objects_only(examples):
    for example in examples[:20]:
        words = caption_text(example).split()
        assert len(words) == 2 * sum(not item.clutter for item in example.objects)
        assert not set(words) & set(CLUTTER_KINDS)


def test_knobs_shift_the_distribution():
    plain = SceneSpec.from_flags(clutter="0,0", side="20,20", objects="2,3", kinds="count,count,existence")
    drawn = task_split("test", 12, "v2", plain)
    assert all(example.grid == (20, 20) for example in drawn)
    assert all(not any(item.clutter for item in example.objects) for example in drawn)
    assert all(2 <= len(example.objects) <= 4 for example in drawn)  # a count of four needs four objects
    assert Counter(example.kind for example in drawn) == {"count": 8, "existence": 4}
    only_rings = task_split("test", 6, "v2", SceneSpec(clutter_kinds=("ring",)))
    assert {item.shape for example in only_rings for item in example.objects if item.clutter} == {"ring"}


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (dict(objects="1,4"), "objects"),
        (dict(objects="5,3"), "objects"),
        (dict(clutter="x"), "clutter"),
        (dict(side="2,3"), "side"),
        (dict(clutter="200,300"), "objects"),
        (dict(clutter_kinds="ring,ring"), "clutter_kinds"),
        (dict(clutter_kinds="hexagon"), "clutter_kinds"),
        (dict(kinds="reading"), "kinds"),
    ],
)
def test_bad_knobs_are_refused_naming_the_flag(flags, named):
    with pytest.raises(ValueError, match=f"`{named}`"):
        SceneSpec.from_flags(**flags)


def test_bad_task_and_seed_are_refused():
    with pytest.raises(ValueError, match="`task`"):
        task_example(0, "v3")
    with pytest.raises(ValueError, match="seed"):
        make_example(-1)
    with pytest.raises(ValueError, match="kind"):
        make_example(0, kind="reading")


def test_eval_knob_flags_reach_the_generator_and_bad_ones_fail_before_loading(monkeypatch):
    from hf_tokenprune.cli import main
    from hf_tokenprune_testbed import evaluate as testbed_evaluate

    monkeypatch.setattr("hf_tokenprune_testbed.model.load_testbed", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="`clutter`"):
        main(["eval", "--task", "v2", "--clutter", "x"])
    with pytest.raises(ValueError, match="--objects"):
        main(["eval", "--task", "v1", "--objects", "2,3"])  # a v2 knob with the v1 task
    with pytest.raises(ValueError, match="`task`"):
        main(["eval", "--task", "v3"])
    args = testbed_evaluate.EvalArguments(task="v2", side="20,20", clutter_kinds="ring,dot", kinds="count")
    assert args.scene_spec() == SceneSpec(side=(20, 20), clutter_kinds=("ring", "dot"), kinds=("count",))
    drawn = task_split("test", 3, "v2", args.scene_spec())
    assert all(example.grid == (20, 20) and example.kind == "count" for example in drawn)
