"""The synthetic VQA generator: determinism, splits, geometry, balance, and answers re-derived by an independent oracle
from the scene description and from the pixels."""

import math
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from hf_tokenprune_testbed.tasks import (
    COLOUR_RGB,
    COLOURS,
    KINDS,
    MAX_PIXELS,
    MIN_PIXELS,
    SHAPES,
    TOKEN_PIXELS,
    VOCABULARY,
    WORDS,
    VQAExample,
    evidence_token_fraction,
    make_example,
    make_split,
    token_grid,
)

N_SEEDS = 400  # 80 per kind
NUMBERS = ("one", "two", "three", "four")
PLURAL_TO_SHAPE = {shape + ("es" if shape.endswith("s") else "s"): shape for shape in SHAPES}
# The oracle's own reading of the questions: (pattern, kind) -> named groups.
QUESTION_PATTERNS = {
    "attribute": re.compile(r"what colour is the (?P<shape>\w+)"),
    "identity": re.compile(r"which shape is (?P<colour>\w+)"),
    "count": re.compile(r"how many (?P<plural>\w+) are there"),
    "existence": re.compile(r"is there a (?P<colour>\w+) (?P<shape>\w+)"),
    "reading": re.compile(r"what word is in the (?P<colour>\w+) box"),
}
# Share of a shape's box that the shape fills: square 1, circle pi/4, cross 2a - a^2 with arm a = 0.4, triangle 1/2,
# star with inner radius 0.45 of the outer one, stretched to its box: 5 R r sin 36 / (2 R sin 72 * R (1 + cos 36)).
FILL_FRACTION = {
    "square": 1.0,
    "circle": math.pi / 4,
    "cross": 2 * 0.4 - 0.4**2,
    "triangle": 0.5,
    "star": 5 * 0.45 * math.sin(math.radians(36)) / (2 * math.sin(math.radians(72)) * (1 + math.cos(math.radians(36)))),
}


@pytest.fixture(scope="module")
def examples() -> list[VQAExample]:
    return [make_example(seed) for seed in range(N_SEEDS)]


def _shapes(example):
    return [item for item in example.objects if item.word is None]


def _word_boxes(example):
    return [item for item in example.objects if item.word is not None]


def test_same_seed_same_example_and_different_seeds_differ():
    first, again, other = make_example(7), make_example(7), make_example(8)
    assert first.image.tobytes() == again.image.tobytes() and first.image.size == again.image.size
    assert (first.question, first.answer, first.kind, first.evidence, first.objects) == (
        again.question,
        again.answer,
        again.kind,
        again.evidence,
        again.objects,
    )
    assert first.image.tobytes() != other.image.tobytes()
    assert first.seed == 7 and other.seed == 8
    # naming the kind a seed draws anyway gives the same example; naming another kind gives that kind
    assert make_example(7, first.kind).image.tobytes() == first.image.tobytes()
    for kind in KINDS:
        assert make_example(7, kind).kind == kind


def test_splits_use_disjoint_seed_ranges():
    splits = {split: make_split(split, 4) for split in ("train", "validation", "test")}
    seeds = {split: {example.seed for example in items} for split, items in splits.items()}
    assert seeds["train"] == {0, 1, 2, 3}
    assert seeds["validation"] == {10**7 + i for i in range(4)}
    assert seeds["test"] == {2 * 10**7 + i for i in range(4)}
    assert splits["test"][2].image.tobytes() == make_example(2 * 10**7 + 2).image.tobytes()
    images = [example.image.tobytes() for items in splits.values() for example in items]
    assert len(set(images)) == len(images)
    assert make_split("train", 0) == []


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: make_split("dev", 3), "split"),
        (lambda: make_split("train", -1), "n"),
        (lambda: make_split("train", 2.0), "n"),
        (lambda: make_example(-1), "seed"),
        (lambda: make_example(1.5), "seed"),
        (lambda: make_example(3, kind="colour"), "kind"),
        (lambda: token_grid(0, 300), "width"),
        (lambda: token_grid(300, 2.5), "height"),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_image_sizes_and_aspect_ratios_vary(examples):
    sizes = [example.image.size for example in examples[:200]]
    assert all(example.image.mode == "RGB" for example in examples[:200])
    assert all(224 <= side <= 448 for size in sizes for side in size)
    ratios = [width / height for width, height in sizes]
    assert min(ratios) < 0.7 and max(ratios) > 1.4  # portrait and landscape, not only squares
    assert len(set(sizes)) > 150


def test_questions_and_answers_use_the_vocabulary(examples):
    vocabulary = set(VOCABULARY)
    assert list(VOCABULARY) == sorted(vocabulary) and all(word == word.lower().strip() for word in VOCABULARY)
    assert not set(WORDS) & (set(SHAPES) | set(COLOURS) | set(NUMBERS) | {"yes", "no", "box"})
    for example in examples:
        assert set(example.question.split()) <= vocabulary, example.question
        assert example.answer in vocabulary and " " not in example.answer


def test_kinds_and_answers_are_balanced(examples):
    """Tolerance: over consecutive seeds every kind, and every answer of a kind, occurs within 1 of its fair share."""
    answer_options = {
        "attribute": COLOURS,
        "identity": SHAPES,
        "count": NUMBERS,
        "existence": ("yes", "no"),
        "reading": WORDS,
    }
    kinds = Counter(example.kind for example in examples)
    assert set(kinds) == set(KINDS) and max(kinds.values()) - min(kinds.values()) <= 1
    for kind, options in answer_options.items():
        answers = Counter(example.answer for example in examples if example.kind == kind)
        fair = kinds[kind] / len(options)
        assert set(answers) == set(options), kind
        assert all(abs(answers[option] - fair) <= 1 for option in options), (kind, answers)


def test_answers_are_unambiguous_under_an_oracle_reading_of_the_scene(examples):
    for example in examples:
        shapes, word_boxes = _shapes(example), _word_boxes(example)
        assert 2 <= len(shapes) <= 6 and len(word_boxes) <= 2
        assert all(item.shape in SHAPES and item.colour in COLOURS for item in shapes)
        assert all(item.shape is None and item.word in WORDS and item.colour in COLOURS for item in word_boxes)
        match = QUESTION_PATTERNS[example.kind].fullmatch(example.question)
        assert match, example.question
        named = match.groupdict()
        if example.kind == "attribute":
            (target,) = [item for item in shapes if item.shape == named["shape"]]
            expected, evidence = target.colour, [target.box]
        elif example.kind == "identity":
            (target,) = [item for item in shapes if item.colour == named["colour"]]
            expected, evidence = target.shape, [target.box]
        elif example.kind == "count":
            counted = [item for item in shapes if item.shape == PLURAL_TO_SHAPE[named["plural"]]]
            assert len({item.colour for item in counted}) == len(counted)
            expected, evidence = NUMBERS[len(counted) - 1], [item.box for item in counted]
        elif example.kind == "existence":
            colour, shape = named["colour"], named["shape"]
            present = [item for item in shapes if (item.shape, item.colour) == (shape, colour)]
            assert len(present) <= 1
            if present:
                expected, evidence = "yes", [present[0].box]
            else:  # both cues appear, so neither alone answers
                assert any(item.shape == shape for item in shapes) and any(item.colour == colour for item in shapes)
                evidence = [item.box for item in shapes if item.shape == shape or item.colour == colour]
                expected = "no"
        else:
            assert len({item.colour for item in word_boxes}) == len(word_boxes) >= 1
            (target,) = [item for item in word_boxes if item.colour == named["colour"]]
            expected, evidence = target.word, [target.box]
        assert example.answer == expected, (example.seed, example.question, example.answer)
        assert sorted(example.evidence) == sorted(evidence), example.seed


def test_objects_lie_inside_the_image_without_overlap(examples):
    for example in examples:
        width, height = example.image.size
        boxes = [item.box for item in example.objects]
        assert all(0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height for x0, y0, x1, y1 in boxes)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:  # at least one pixel of background between any two objects
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (example.seed, a, b)


def test_pixels_show_each_object_and_clutter_never_uses_an_object_colour(examples):
    palette = np.array([COLOUR_RGB[colour] for colour in COLOURS], dtype=float)
    assert min(np.linalg.norm(a - b) for i, a in enumerate(palette) for b in palette[i + 1 :]) > 100
    for example in examples[:60]:
        pixels = np.asarray(example.image).astype(int)
        outside = np.ones(pixels.shape[:2], dtype=bool)
        for item in example.objects:
            x0, y0, x1, y1 = item.box
            outside[y0:y1, x0:x1] = False
            rgb = np.array(COLOUR_RGB[item.colour])
            region = pixels[y0:y1, x0:x1]
            own = (region == rgb).all(axis=-1)
            if item.word is not None:
                assert own[1, 1] and own[-2, -2]  # the box fills its corners
                text = (region == 0).all(axis=-1) | (region == 255).all(axis=-1)
                assert 0.05 < text.mean() < 0.6, (example.seed, item)
                continue
            cx, cy = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
            assert (pixels[cy, cx] == rgb).all(), (example.seed, item)
            if item.shape == "triangle":  # centroid of the upward triangle, 2/3 of the way down
                assert (pixels[y0 + 2 * (y1 - y0) // 3, cx] == rgb).all(), (example.seed, item)
            # the box is tight (the shape touches all four sides) and the fill tells the shape apart
            assert own[0].any() and own[-1].any() and own[:, 0].any() and own[:, -1].any(), (example.seed, item)
            nearest = min(FILL_FRACTION, key=lambda shape: abs(FILL_FRACTION[shape] - own.mean()))
            assert nearest == item.shape, (example.seed, item, own.mean())
        clutter = pixels[outside].astype(float)
        distance = np.linalg.norm(clutter[:, None, :] - palette[None, :, :], axis=-1)
        assert distance.min() > 60, example.seed


@pytest.mark.parametrize("seed", [0, 1])
def test_token_grid_matches_the_processor_resize(seed):
    """Oracle: the testbed VLM's own processor (its `image_grid_thw`, in 8 px patches merged 2 x 2)."""
    from hf_tokenprune_testbed.model import testbed_processor as make_processor

    image_processor = make_processor().image_processor
    rng = np.random.default_rng(seed)
    sizes = [(int(w), int(h)) for w, h in rng.integers(8, 700, size=(12, 2)) if max(w, h) / min(w, h) <= 200]
    sizes += [(224, 448), (448, 224), (280, 280), (300, 300), (2000, 40), (16, 16)]
    for width, height in sizes:
        grid = image_processor([Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"][0]
        assert token_grid(width, height) == (int(grid[1]) // 2, int(grid[2]) // 2), (width, height)


def test_evidence_token_fraction_on_hand_computed_boxes():
    image = Image.new("RGB", (160, 160))  # kept as is: 10 x 10 tokens of 16 px, scale 1
    one_cell = VQAExample(image, "", "", "attribute", [(16, 16, 32, 32)], 0)
    four_cells = VQAExample(image, "", "", "attribute", [(15, 15, 17, 17)], 0)
    both = VQAExample(image, "", "", "attribute", [(16, 16, 32, 32), (15, 15, 17, 17), (0, 0, 160, 16)], 0)
    assert evidence_token_fraction(one_cell) == pytest.approx(1 / 100)
    assert evidence_token_fraction(four_cells) == pytest.approx(4 / 100)
    assert evidence_token_fraction(both) == pytest.approx(12 / 100)  # all of row 0, then (1, 0) and (1, 1)


def _brute_force_fraction(example: VQAExample) -> float:
    """Per pixel: an original pixel [x, x + 1) spans [x * s, (x + 1) * s) in the resized image and touches every 16 px
    cell that interval overlaps; a token is evidence when any evidence pixel touches it."""
    width, height = example.image.size
    resized_height, resized_width = smart_resize(
        height, width, factor=TOKEN_PIXELS, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in example.evidence:
        mask[y0:y1, x0:x1] = True

    def touches(size, resized):  # (cells, pixels): pixel overlaps cell
        scale = resized / size
        cells = np.arange(resized // TOKEN_PIXELS)[:, None]
        starts, ends = np.arange(size)[None, :] * scale, (np.arange(size)[None, :] + 1) * scale
        return (starts < (cells + 1) * TOKEN_PIXELS) & (ends > cells * TOKEN_PIXELS)

    rows, cols = touches(height, resized_height), touches(width, resized_width)
    touched = (rows.astype(int) @ mask.astype(int) @ cols.T.astype(int)) > 0
    return float(touched.mean())


def test_evidence_token_fraction_matches_a_per_pixel_computation(examples):
    for example in examples[:10]:
        assert evidence_token_fraction(example) == pytest.approx(_brute_force_fraction(example)), example.seed


def test_evidence_covers_about_a_tenth_of_the_tokens_or_less(examples):
    fractions = {kind: [evidence_token_fraction(e) for e in examples if e.kind == kind] for kind in KINDS}
    for kind, values in fractions.items():
        assert min(values) > 0, kind
        assert np.mean(values) <= 0.10, (kind, np.mean(values))
