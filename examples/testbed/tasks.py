"""Synthetic VQA task of the testbed: small coloured shapes and word boxes on a cluttered grey background.

Every example is drawn from its integer seed alone (same seed, same image bytes, question and answer). The scene is
built around the question, so the answer is always unambiguous and depends on one to four small regions:

- ``attribute``  "what colour is the <shape>"          -> a colour    (that shape appears exactly once)
- ``identity``   "which shape is <colour>"              -> a shape     (exactly one shape has that colour)
- ``count``      "how many <shapes> are there"          -> one .. four (the counted shapes differ in colour)
- ``existence``  "is there a <colour> <shape>"          -> yes / no    (POPE-style: a "no" names an absent pairing
  whose shape and colour both appear on other objects, so neither cue alone answers it)
- ``reading``    "what word is in the <colour> box"     -> a word      (box colours are unique among boxes)

Objects are filled shapes in saturated colours (``COLOURS``) whose side is 8-13% of the image's smaller side, so one
object covers about 1-4 visual tokens once the processor resizes the image to about 280 x 280 px (one token per
28 x 28 px cell). Word boxes are coloured rectangles holding a 3-4 letter word (``WORDS``) in black or white. The
background (gradients, noise, stripes, faint lines and blobs) only uses grey, low-saturation tints, so it never looks
like an object. ``VQAExample.evidence`` holds the boxes the answer depends on; ``evidence_token_fraction`` is the
share of visual tokens they touch (about 5-10%), the part of the image a token selector must keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "star", "cross")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
COLOURS = ("red", "green", "blue", "yellow", "purple")
COLOUR_RGB = {
    "red": (225, 30, 30),
    "green": (20, 170, 40),
    "blue": (30, 80, 230),
    "yellow": (245, 215, 0),
    "purple": (160, 40, 200),
}
# Distinct first letters and outlines, so a word can be told apart from a few 14 px patches.
WORDS = ("cat", "dog", "sun", "key", "fish", "bird", "moon", "pen")
COUNT_WORDS = ("one", "two", "three", "four")
KINDS = ("attribute", "identity", "count", "existence", "reading")

QUESTION_TEMPLATES = {
    "attribute": "what colour is the {shape}",
    "identity": "which shape is {colour}",
    "count": "how many {shapes} are there",
    "existence": "is there a {colour} {shape}",
    "reading": "what word is in the {colour} box",
}
_TEMPLATE_WORDS = {word for template in QUESTION_TEMPLATES.values() for word in template.split() if "{" not in word}
VOCABULARY = tuple(
    sorted(
        _TEMPLATE_WORDS
        | set(SHAPES)
        | set(SHAPE_PLURALS.values())
        | set(COLOURS)
        | set(WORDS)
        | set(COUNT_WORDS)
        | {"yes", "no"}
    )
)

SPLIT_SEED_OFFSETS = {"train": 0, "validation": 10**7, "test": 2 * 10**7}
SPLIT_SIZE = 10**7

MIN_SIDE, MAX_SIDE = 224, 448
# The testbed VLM's geometry (`model.py`): 8 px patches merged 2 x 2, one visual token per 16 x 16 px cell; its
# processor keeps an image's aspect and rounds each side to a multiple of 16 px with the area in this range.
TOKEN_PIXELS = 16
MIN_PIXELS, MAX_PIXELS = TOKEN_PIXELS**2 * 16, TOKEN_PIXELS**2 * 1024
OBJECT_SIDE = (0.08, 0.13)  # of the image's smaller side
TEXT_HEIGHT = (0.08, 0.10)  # ascender height of a word, of the image's smaller side
STAR_INNER_RADIUS = 0.45  # of the outer radius: fatter than a pentagram, so it stays a star at 20 px
CROSS_ARM = 0.4  # arm width of the cross, of its side
WORD_BOX_HEIGHT = 1.5  # word box height per text height
MAX_OBJECTS = 6

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SceneObject:
    """One drawn item: a shape (``word`` is None) or a word box (``shape`` is None). ``box`` = (x0, y0, x1, y1),
    x1 and y1 exclusive, tight around the drawn pixels."""

    shape: str | None
    colour: str
    box: Box
    word: str | None = None
    clutter: bool = False  # task v2 (`scenes.py`): a glyph no question names; ``shape`` holds its kind

    @property
    def is_word_box(self) -> bool:
        return self.word is not None


@dataclass
class VQAExample:
    """One task example. ``objects`` is the full scene (shapes and word boxes), from which any answer can be
    re-derived; ``evidence`` the pixel boxes (x0, y0, x1, y1) of the objects the answer depends on."""

    image: Image.Image
    question: str
    answer: str
    kind: str
    evidence: list[Box]
    seed: int
    objects: list[SceneObject] = field(default_factory=list)
    grid: tuple[int, int] | None = None  # (rows, cols) of visual tokens when the image is drawn on the token grid (v2)


def shapes_named(text: str) -> tuple[str, ...]:
    """The shapes `text` names, in `SHAPES` order, singular or plural ("how many crosses" -> ("cross",))."""
    words = set(text.split())
    return tuple(shape for shape in SHAPES if shape in words or SHAPE_PLURALS[shape] in words)


def token_grid(width: int, height: int, image_processor=None) -> tuple[int, int]:
    """(rows, cols) of visual tokens of a ``width`` x ``height`` image after the resize of ``image_processor`` (a
    Qwen2-VL-style image processor: one token per ``patch_size * merge_size`` px cell, the area bounded by its
    ``size``); by default the processor of the VLM that `model.new_testbed_model` builds (16 px cells)."""
    factor, min_pixels, max_pixels = TOKEN_PIXELS, MIN_PIXELS, MAX_PIXELS
    if image_processor is not None:
        factor = image_processor.patch_size * image_processor.merge_size
        min_pixels, max_pixels = image_processor.size["shortest_edge"], image_processor.size["longest_edge"]
    resized_height, resized_width = _resized_size(width, height, factor, min_pixels, max_pixels)
    return resized_height // factor, resized_width // factor


def evidence_token_fraction(example: VQAExample, grid: tuple[int, int] | None = None) -> float:
    """Share of the image's visual tokens whose cell (in the resized image) overlaps an evidence box."""
    return float(evidence_token_mask(example, grid).mean())


def evidence_token_mask(example: VQAExample, grid: tuple[int, int] | None = None) -> np.ndarray:
    """(rows * cols,) bool in the visual tokens' row-major order: the tokens whose cell (in the resized image)
    overlaps an evidence box, i.e. the tokens a selector must keep for the answer. ``grid``: the model's (rows, cols)
    token grid for this image (`token_grid` with its image processor); default the example's own grid (v2 images
    are drawn on one), else the default processor's."""
    width, height = example.image.size
    rows, cols = grid or example.grid or token_grid(width, height)
    scale_x, scale_y = cols * TOKEN_PIXELS / width, rows * TOKEN_PIXELS / height
    touched = np.zeros((rows, cols), dtype=bool)
    for x0, y0, x1, y1 in example.evidence:
        col0, col1 = math.floor(x0 * scale_x / TOKEN_PIXELS), math.ceil(x1 * scale_x / TOKEN_PIXELS)
        row0, row1 = math.floor(y0 * scale_y / TOKEN_PIXELS), math.ceil(y1 * scale_y / TOKEN_PIXELS)
        touched[max(row0, 0) : min(row1, rows), max(col0, 0) : min(col1, cols)] = True
    return touched.reshape(-1)


def make_split(split: str, n: int) -> list[VQAExample]:
    """The first ``n`` examples of ``split`` ("train", "validation" or "test"); the splits use disjoint seed ranges
    of 10**7 seeds each (train from 0, validation from 10**7, test from 2 * 10**7)."""
    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEED_OFFSETS)}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= SPLIT_SIZE:
        raise ValueError(f"n must be an integer in [0, {SPLIT_SIZE}], got {n!r}")
    offset = SPLIT_SEED_OFFSETS[split]
    return [make_example(offset + index) for index in range(n)]


def make_example(seed: int, kind: str | None = None, plain_background: bool = False) -> VQAExample:
    """The example of ``seed``. Kinds and answers cycle with the seed, so any run of consecutive seeds is balanced:
        the kind is ``KINDS[seed % 5]`` unless ``kind`` is given, the answer is chosen by ``seed // 5`` (colours, shapes,
        counts, yes/no, words in turn); everything else (size, scene, layout, background) is drawn from the seed's
        generator. ``make_example(s, make_example(s).kind)`` is ``make_example(s)``. ``plain_background`` swaps the clutter
    for even grey (same scene, question and answer): an easy start for a VLM trained from scratch."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    seed = int(seed)
    rng = np.random.default_rng(seed)
    kind = kind or KINDS[seed % len(KINDS)]
    width, height = (int(side) for side in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))

    question, answer, shapes, words, evidence_of = _QUESTION_BUILDERS[kind](rng, seed // len(KINDS))
    objects = _place(rng, width, height, shapes, words)
    image = _background(rng, width, height)
    if plain_background:  # curriculum for training from scratch: the same scene on an even grey
        image = Image.new("RGB", (width, height), (128, 128, 128))
    _draw(image, objects)
    evidence = [objects[index].box for index in evidence_of]
    return VQAExample(image, question, answer, kind, evidence, seed, objects)


# ---- questions: each builder takes the generator and the seed's answer slot (seed // len(KINDS), which cycles the
# ---- answers so that every kind's answers are exactly balanced over consecutive seeds; task v2 (`scenes.py`) also
# ---- passes its (min, max) objects and no word boxes) and returns (question,
# ---- answer, shape specs, word-box specs, indices of the evidence objects); specs are (shape, colour) and
# ---- (word, colour); evidence indices count the shapes first, then the word boxes.


def _pick(rng: np.random.Generator, options) -> str:
    return options[rng.integers(len(options))]


def _random_pairs(rng: np.random.Generator, n: int, shapes=SHAPES, colours=COLOURS, avoid=None):
    pairs = []
    while len(pairs) < n:
        pair = (_pick(rng, shapes), _pick(rng, colours))
        if pair != avoid:
            pairs.append(pair)
    return pairs


def _optional_words(rng: np.random.Generator) -> list[tuple[str, str]]:
    """Word boxes in questions that do not read them: none in 60% of images, else one or two."""
    if rng.random() < 0.6:
        return []
    count = 1 + int(rng.integers(2))
    words = rng.choice(len(WORDS), size=count, replace=False)
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    return [(WORDS[w], COLOURS[c]) for w, c in zip(words, colours, strict=True)]


def _shuffled(rng: np.random.Generator, specs: list, n_evidence: int) -> tuple[list, list[int]]:
    """Shuffle the drawing order; the first ``n_evidence`` specs are the evidence."""
    order = rng.permutation(len(specs))
    return [specs[i] for i in order], sorted(int(np.flatnonzero(order == i)[0]) for i in range(n_evidence))


def _n_objects(rng: np.random.Generator, objects: tuple[int, int], least: int) -> int:
    """How many objects a scene gets: uniform in ``objects`` = (min, max), raised to ``least``."""
    return int(rng.integers(max(objects[0], least), max(objects[1], least) + 1))


def _attribute(rng, slot: int, objects=(2, MAX_OBJECTS), words=True):
    shape, colour = _pick(rng, SHAPES), COLOURS[slot % len(COLOURS)]
    others = [s for s in SHAPES if s != shape]
    pairs = _random_pairs(rng, _n_objects(rng, objects, 2) - 1, shapes=others)
    specs, evidence = _shuffled(rng, [(shape, colour), *pairs], 1)
    boxes = _optional_words(rng) if words else []
    return QUESTION_TEMPLATES["attribute"].format(shape=shape), colour, specs, boxes, evidence


def _identity(rng, slot: int, objects=(2, MAX_OBJECTS), words=True):
    shape, colour = SHAPES[slot % len(SHAPES)], _pick(rng, COLOURS)
    others = [c for c in COLOURS if c != colour]
    pairs = _random_pairs(rng, _n_objects(rng, objects, 2) - 1, colours=others)
    specs, evidence = _shuffled(rng, [(shape, colour), *pairs], 1)
    boxes = _optional_words(rng) if words else []
    return QUESTION_TEMPLATES["identity"].format(colour=colour), shape, specs, boxes, evidence


def _count(rng, slot: int, objects=(2, MAX_OBJECTS), words=True):
    shape, count = _pick(rng, SHAPES), 1 + slot % len(COUNT_WORDS)
    counted = [(shape, COLOURS[c]) for c in rng.choice(len(COLOURS), size=count, replace=False)]
    others = [s for s in SHAPES if s != shape]
    pairs = _random_pairs(rng, _n_objects(rng, objects, count) - count, shapes=others)
    specs, evidence = _shuffled(rng, [*counted, *pairs], count)
    question = QUESTION_TEMPLATES["count"].format(shapes=SHAPE_PLURALS[shape])
    return question, COUNT_WORDS[count - 1], specs, _optional_words(rng) if words else [], evidence


def _existence(rng, slot: int, objects=(2, MAX_OBJECTS), words=True):
    shape, colour = _pick(rng, SHAPES), _pick(rng, COLOURS)
    present = slot % 2 == 0
    if present:
        required = [(shape, colour)]
    else:  # the named shape and the named colour both appear, never together
        required = [
            (shape, _pick(rng, [c for c in COLOURS if c != colour])),
            (_pick(rng, [s for s in SHAPES if s != shape]), colour),
        ]
    n_objects = _n_objects(rng, objects, len(required))
    specs = [*required, *_random_pairs(rng, n_objects - len(required), avoid=(shape, colour))]
    if present:
        specs, evidence = _shuffled(rng, specs, 1)
    else:
        specs, _ = _shuffled(rng, specs, 0)
        evidence = [i for i, (s, c) in enumerate(specs) if s == shape or c == colour]
    question = QUESTION_TEMPLATES["existence"].format(colour=colour, shape=shape)
    return question, "yes" if present else "no", specs, _optional_words(rng) if words else [], evidence


def _reading(rng, slot: int):
    n_boxes = 1 + int(rng.integers(2))
    word = WORDS[slot % len(WORDS)]
    words = [word, *([_pick(rng, [w for w in WORDS if w != word])] if n_boxes == 2 else [])]
    colours = [COLOURS[i] for i in rng.choice(len(COLOURS), size=n_boxes, replace=False)]
    n_objects = int(rng.integers(2, MAX_OBJECTS + 1))
    specs = _random_pairs(rng, n_objects)
    boxes, box_evidence = _shuffled(rng, list(zip(words, colours, strict=True)), 1)
    word, colour = words[0], colours[0]
    question = QUESTION_TEMPLATES["reading"].format(colour=colour)
    return question, word, specs, boxes, [n_objects + box_evidence[0]]


_QUESTION_BUILDERS = {
    "attribute": _attribute,
    "identity": _identity,
    "count": _count,
    "existence": _existence,
    "reading": _reading,
}


# ---- layout and drawing


def _resized_size(
    width: int, height: int, factor: int = TOKEN_PIXELS, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """(height, width) after a Qwen2-VL image processor's resize (the stock `smart_resize`)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max(width, height) / min(width, height) > 200:
        raise ValueError(f"width / height must be within 1/200 and 200, got {width} x {height}")
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=1)
def _ascender_ratio() -> float:
    """Height of ascender letters per unit of font size, to size fonts by the height of their text."""
    top, bottom = _font(100).getbbox("bdfhkl")[1::2]
    return (bottom - top) / 100


def _font_size(box_height: int) -> tuple[int, int]:
    """Font size and stroke width for a word box ``box_height`` px tall (its text is 1 / WORD_BOX_HEIGHT of it)."""
    font_size = max(8, round(box_height / WORD_BOX_HEIGHT / _ascender_ratio()))
    return font_size, max(1, round(font_size / 20))  # a bolder stroke keeps thin letters legible after the resize


def _text_colour(colour: str) -> tuple[int, int, int]:
    red, green, blue = COLOUR_RGB[colour]
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def _place(rng, width: int, height: int, shapes: list, words: list) -> list[SceneObject]:
    """Boxes for the shapes, then the word boxes (in that order), apart from each other and from the border."""
    short_side = min(width, height)
    gap = max(4, round(0.03 * short_side))
    sizes = []  # (width, height) of every box: word boxes first, then shapes
    for word, _ in words:
        box_height = round(rng.uniform(*TEXT_HEIGHT) * short_side * WORD_BOX_HEIGHT)
        font_size, stroke = _font_size(box_height)
        left, _, right, _ = _font(font_size).getbbox(word, stroke_width=stroke, anchor="mm")
        sizes.append((right - left + 2 * round(0.2 * box_height), box_height))
    for _ in shapes:
        side = round(rng.uniform(*OBJECT_SIDE) * short_side)
        sizes.append((side, side))

    # Largest first, so small shapes fill the gaps; on a rare dead end start the layout over.
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1])
    while True:
        placed: dict[int, Box] = {}
        for index in order:
            box_width, box_height = sizes[index]
            for _attempt in range(100):
                x0 = int(rng.integers(gap // 2, width - box_width - gap // 2 + 1))
                y0 = int(rng.integers(gap // 2, height - box_height - gap // 2 + 1))
                box = (x0, y0, x0 + box_width, y0 + box_height)
                if all(_apart(box, other, gap) for other in placed.values()):
                    placed[index] = box
                    break
            else:
                break
        if len(placed) == len(sizes):
            break

    objects = [SceneObject(None, colour, placed[i], word) for i, (word, colour) in enumerate(words)]
    return [SceneObject(shape, colour, placed[len(words) + i]) for i, (shape, colour) in enumerate(shapes)] + objects


def _apart(box: Box, other: Box, gap: int) -> bool:
    return box[2] + gap <= other[0] or other[2] + gap <= box[0] or box[3] + gap <= other[1] or other[3] + gap <= box[1]


def _background(rng, width: int, height: int) -> Image.Image:
    """Grey, low-saturation clutter: a tinted gradient, one texture, faint lines and blobs."""
    base = rng.uniform(70, 190)
    tint = rng.uniform(-8, 8, size=3)
    ramp = rng.uniform(-45, 45)
    angle = rng.uniform(0, 2 * math.pi)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    grey = base + ramp * (math.cos(angle) * xs + math.sin(angle) * ys)
    texture = rng.integers(3)
    if texture == 0:  # blotchy noise: coarse cells of random brightness
        cell = int(rng.integers(2, 7))
        coarse = rng.normal(0, rng.uniform(6, 16), size=(height // cell + 1, width // cell + 1)).astype(np.float32)
        grey = grey + np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:height, :width]
    elif texture == 1:  # stripes at a random angle and period
        period = rng.uniform(6, 30)
        stripe_angle = rng.uniform(0, math.pi)
        phase = (math.cos(stripe_angle) * xs * width + math.sin(stripe_angle) * ys * height) * (2 * math.pi / period)
        grey = grey + rng.uniform(6, 18) * np.sin(phase)
    else:  # fine pixel noise
        grey = grey + rng.normal(0, rng.uniform(4, 10), size=(height, width)).astype(np.float32)
    pixels = np.clip(grey[:, :, None] + tint.astype(np.float32), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")

    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 10))):
        value = int(np.clip(base + rng.uniform(-55, 55), 20, 235))
        fill = tuple(int(np.clip(value + t, 0, 255)) for t in rng.uniform(-6, 6, size=3))
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.5:  # a thin line
            x1, y1 = x0 + rng.uniform(-0.5, 0.5) * width, y0 + rng.uniform(-0.5, 0.5) * height
            draw.line((x0, y0, x1, y1), fill=fill, width=int(rng.integers(1, 4)))
        else:  # a flat elongated blob
            radius_x = rng.uniform(0.03, 0.15) * width
            radius_y = radius_x * rng.uniform(0.15, 0.4)  # elongated, so never read as a circle
            draw.ellipse((x0 - radius_x, y0 - radius_y, x0 + radius_x, y0 + radius_y), fill=fill)
    return image


def _polygon(shape: str, box: Box) -> list[tuple[float, float]]:
    """Vertices of ``shape`` stretched to touch all four sides of ``box`` (inclusive pixel coordinates)."""
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    if shape == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    if shape == "cross":
        arm = CROSS_ARM * (x1 - x0) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        a, b = cx - arm, cx + arm
        c, d = cy - arm, cy + arm
        return [(a, y0), (b, y0), (b, c), (x1, c), (x1, d), (b, d), (b, y1), (a, y1), (a, d), (x0, d), (x0, c), (a, c)]
    # star: five outer points, first one up, on a unit circle, then scaled to the box
    points = []
    for i in range(10):
        radius = 1.0 if i % 2 == 0 else STAR_INNER_RADIUS
        theta = -math.pi / 2 + i * math.pi / 5
        points.append((radius * math.cos(theta), radius * math.sin(theta)))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    left, top = min(xs), min(ys)
    span_x, span_y = max(xs) - left, max(ys) - top
    return [(x0 + (x - left) / span_x * (x1 - x0), y0 + (y - top) / span_y * (y1 - y0)) for x, y in points]


def _draw(image: Image.Image, objects: list[SceneObject]) -> None:
    draw = ImageDraw.Draw(image)
    for item in objects:
        fill = COLOUR_RGB[item.colour]
        x0, y0, x1, y1 = item.box
        if item.is_word_box:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
            font_size, stroke = _font_size(y1 - y0)
            text_fill = _text_colour(item.colour)
            draw.text(
                ((x0 + x1) / 2, (y0 + y1) / 2),
                item.word,
                font=_font(font_size),
                fill=text_fill,
                anchor="mm",
                stroke_width=stroke,
                stroke_fill=text_fill,
            )
        elif item.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif item.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon(_polygon(item.shape, item.box), fill=fill)
