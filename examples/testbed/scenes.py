"""Task v2 of the testbed: shapes to ask about among distinctive clutter that no question is about.

Why a second task: in task v1 (`tasks.py`) the evidence is a few coloured objects on a grey textured background, so
the tokens that differ most from the rest are exactly the evidence, and a diversity rule (DivPrune, DART) finds it as
well as a learned selector (`docs/testbed.md`). Real images hold many distinctive regions no question needs (text
blocks, logos, street furniture). Here every image is a grid of cells; a few cells hold *objects* (filled circle,
square, triangle, star, cross in five saturated colours), many more hold *clutter* (ring, diamond, frame, bar, x-mark,
dot, in the same five colours, same size): as salient and as varied as the objects, so neither diversity nor
duplicate removal can tell them apart. Questions only ever name objects; a selector has to learn which kinds matter.

Geometry: one cell is ``CELL`` = 16 px, exactly one visual token of the testbed VLM (8 px patches merged 2 x 2), and
images are whole cells, so the processor keeps their size and token (r, c) is cell (r, c). Four question kinds, as in
v1 and exactly balanced over consecutive seeds: attribute ("what colour is the star"), identity ("which shape is
red"), count ("how many circles are there", one to four), existence ("is there a blue cross", POPE-style "no": the
named shape and colour both appear, never together). Every knob of the generator is a field of `SceneSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image, ImageDraw

from .tasks import _QUESTION_BUILDERS, COLOUR_RGB, COLOURS, SHAPES, SceneObject, VQAExample, _pick

CELL = 16  # px per cell = per visual token
CLUTTER_KINDS = ("ring", "diamond", "frame", "bar", "xmark", "dot")
KINDS = ("attribute", "identity", "count", "existence")


def _pair(text: str, name: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in str(text).split(","))
    except ValueError:
        raise ValueError(f"`{name}` must be `min,max` integers, got {text!r}") from None
    return low, high


@dataclass(frozen=True)
class SceneSpec:
    """The generator's knobs (each one an `eval` flag). Defaults are the distribution the bundled VLM is trained on.

    objects: (min, max) objects per image (shapes questions can name). clutter: (min, max) clutter items.
    clutter_kinds: which clutter glyphs are drawn. side: (min, max) image side in cells (= visual tokens).
    kinds: the question kinds, cycled over consecutive seeds (a kind named twice is asked twice as often).
    """

    objects: tuple[int, int] = (3, 8)
    clutter: tuple[int, int] = (24, 64)
    clutter_kinds: tuple[str, ...] = CLUTTER_KINDS
    side: tuple[int, int] = (12, 18)
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        for name, low_floor in (("objects", 2), ("clutter", 0), ("side", 4)):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                or not low_floor <= value[0] <= value[1]
            ):
                raise ValueError(f"`{name}` must be (min, max) integers with {low_floor} <= min <= max, got {value!r}")
        if self.objects[1] > 12:
            raise ValueError(f"`objects` max must be <= 12 (the answer slots assume few objects), got {self.objects}")
        if self.objects[1] + self.clutter[1] > self.side[0] ** 2:
            raise ValueError(
                f"`objects` max + `clutter` max ({self.objects[1] + self.clutter[1]}) must fit the smallest image "
                f"({self.side[0]} x {self.side[0]} cells)"
            )
        unknown = [kind for kind in self.clutter_kinds if kind not in CLUTTER_KINDS]
        if unknown or len(set(self.clutter_kinds)) != len(self.clutter_kinds):
            raise ValueError(f"`clutter_kinds` must be distinct names among {CLUTTER_KINDS}, got {self.clutter_kinds}")
        if not self.clutter_kinds and self.clutter[1] > 0:
            raise ValueError("`clutter_kinds` is empty but `clutter` asks for clutter")
        if not self.kinds or any(kind not in KINDS for kind in self.kinds):
            raise ValueError(f"`kinds` must be a non-empty list of {KINDS}, got {self.kinds}")

    @classmethod
    def from_flags(cls, **flags: str | None) -> SceneSpec:
        """From `eval`'s string flags (`"3,8"`, `"ring,dot"`); a flag left None keeps the default."""
        values = {}
        for spec_field in fields(cls):
            text = flags.get(spec_field.name)
            if text is None:
                continue
            if spec_field.name in ("objects", "clutter", "side"):
                values[spec_field.name] = _pair(text, spec_field.name)
            else:
                values[spec_field.name] = tuple(part for part in str(text).split(",") if part)
        return cls(**values)


DEFAULT_SPEC = SceneSpec()
# A curriculum for training a VLM from scratch (`reproduce --vlm_schedule`): small images with few distractors first,
# where finding the asked object among the visual tokens is easy to learn, then the full distribution.
SCENES = {"easy": SceneSpec(objects=(2, 4), clutter=(0, 8), side=(6, 8)), "full": DEFAULT_SPEC}


def make_example(seed: int, kind: str | None = None, spec: SceneSpec = DEFAULT_SPEC) -> VQAExample:
    """The v2 example of ``seed``: kind ``spec.kinds[seed % len]`` unless given, answer slot ``seed // len``; the
    rest (size, scene, layout, background) from the seed's generator."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    seed = int(seed)
    rng = np.random.default_rng([seed, 2])  # a stream of its own: v1 and v2 of one seed are unrelated
    kind = kind or spec.kinds[seed % len(spec.kinds)]
    rows, cols = (int(v) for v in rng.integers(spec.side[0], spec.side[1] + 1, size=2))
    question, answer, specs, _, evidence_of = _QUESTION_BUILDERS[kind](
        rng, seed // len(spec.kinds), objects=spec.objects, words=False
    )
    n_clutter = int(rng.integers(spec.clutter[0], spec.clutter[1] + 1))
    clutter = [(_pick(rng, spec.clutter_kinds), _pick(rng, COLOURS)) for _ in range(n_clutter)]
    cells = rng.choice(rows * cols, size=len(specs) + n_clutter, replace=False)
    objects = [
        SceneObject(shape, colour, _cell_box(int(cell), cols), clutter=index >= len(specs))
        for index, ((shape, colour), cell) in enumerate(zip([*specs, *clutter], cells, strict=True))
    ]
    image = _background(rng, cols * CELL, rows * CELL)
    draw = ImageDraw.Draw(image)
    for item in objects:
        _draw_glyph(draw, item.shape, COLOUR_RGB[item.colour], item.box)
    evidence = [objects[i].box for i in evidence_of]
    return VQAExample(image, question, answer, kind, evidence, seed, objects, grid=(rows, cols))


def _cell_box(cell: int, cols: int) -> tuple[int, int, int, int]:
    row, col = divmod(cell, cols)
    return (col * CELL, row * CELL, (col + 1) * CELL, (row + 1) * CELL)


# ---- questions: v1's builders (`tasks._QUESTION_BUILDERS`) with this spec's object counts and no word boxes


# ---- drawing


def _background(rng, width: int, height: int) -> Image.Image:
    """Even grey with a gentle gradient and faint noise: the clutter, not the background, is what distracts here."""
    base = rng.uniform(95, 165)
    ramp = rng.uniform(-25, 25)
    angle = rng.uniform(0, 2 * math.pi)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    grey = base + ramp * (math.cos(angle) * xs + math.sin(angle) * ys)
    grey = grey + rng.normal(0, 3, size=(height, width)).astype(np.float32)
    return Image.fromarray(np.clip(np.repeat(grey[:, :, None], 3, axis=2), 0, 255).astype(np.uint8), "RGB")


def _draw_glyph(draw: ImageDraw.ImageDraw, kind: str, fill, box) -> None:
    """One glyph inside its cell with a 2 px margin (inclusive pixel coordinates below)."""
    x0, y0, x1, y1 = box[0] + 2, box[1] + 2, box[2] - 3, box[3] - 3
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif kind == "square":
        draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == "star":
        points = []
        for i in range(10):
            radius = (x1 - x0) / 2 * (1.0 if i % 2 == 0 else 0.45)
            theta = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(theta), cy + 1 + radius * math.sin(theta)))
        draw.polygon(points, fill=fill)
    elif kind == "cross":
        arm = 2
        draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
        draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
    elif kind == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=fill, width=2)
    elif kind == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif kind == "frame":
        draw.rectangle((x0, y0, x1, y1), outline=fill, width=2)
    elif kind == "bar":
        draw.rectangle((x0, cy - 2, x1, cy + 2), fill=fill)
    elif kind == "xmark":
        draw.line((x0, y0, x1, y1), fill=fill, width=3)
        draw.line((x0, y1, x1, y0), fill=fill, width=3)
    elif kind == "dot":
        draw.ellipse((cx - 2.5, cy - 2.5, cx + 2.5, cy + 2.5), fill=fill)
    else:
        raise ValueError(f"unknown glyph {kind!r}")


# ---- both tasks behind one switch (the pipeline, eval and demo take `task`)

TASKS = ("v1", "v2")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}, got {task!r}")
    return task


def task_example(seed: int, task: str = "v2", kind: str | None = None, spec: SceneSpec = DEFAULT_SPEC) -> VQAExample:
    """The example of ``seed`` in ``task`` ("v2": this module, with ``spec``; "v1": `tasks.make_example`)."""
    if check_task(task) == "v1":
        from .tasks import make_example as make_v1_example

        return make_v1_example(seed, kind=kind)
    return make_example(seed, kind=kind, spec=spec)


def task_split(split: str, n: int, task: str = "v2", spec: SceneSpec = DEFAULT_SPEC) -> list[VQAExample]:
    """The first ``n`` examples of ``split`` in ``task``; splits are the disjoint seed ranges of `tasks.make_split`."""
    from .tasks import SPLIT_SEED_OFFSETS, SPLIT_SIZE, make_split

    if check_task(task) == "v1":
        return make_split(split, n)
    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEED_OFFSETS)}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= SPLIT_SIZE:
        raise ValueError(f"n must be an integer in [0, {SPLIT_SIZE}], got {n!r}")
    return [task_example(SPLIT_SEED_OFFSETS[split] + index, task, spec=spec) for index in range(n)]


def label_names(task: str = "v2") -> tuple[tuple[str, ...], ...]:
    """Per-token label groups of stage 1, class 0 (background) excluded: the words that name each class."""
    from .tasks import WORDS

    if check_task(task) == "v1":
        return (COLOURS, (*SHAPES, "box"), WORDS)
    return (COLOURS, (*SHAPES, *CLUTTER_KINDS))


def grid_token_labels(example: VQAExample) -> np.ndarray:
    """(tokens, 2) v2 labels, raster order: colour and kind (shape or clutter glyph) of the cell's glyph, 0 = none."""
    rows, cols = example.grid
    labels = np.zeros((rows, cols, 2), dtype=np.int64)
    kinds = (*SHAPES, *CLUTTER_KINDS)
    for item in example.objects:
        labels[item.box[1] // CELL, item.box[0] // CELL] = (COLOURS.index(item.colour) + 1, kinds.index(item.shape) + 1)
    return labels.reshape(-1, 2)
