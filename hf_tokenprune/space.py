"""The Spaces demo: what pruning keeps, and what it costs, in the browser.

`hf-tokenprune space` serves this Gradio app locally; a Space runs it through the template in `hub_cards/space/`, which
`hf-tokenprune push-space --repo-id you/name` publishes (`hub.render_space`, `hub.push_space`).
The app answers an image question unpruned and pruned, side by side, with the time to first token (TTFT) of each,
the prefill speed-up, kept / total visual tokens, KV-cache bytes and the kept tokens drawn over the image; "compare
all methods" does the same for every method the model can run. Gradio is imported only when an app is built.
"""

from __future__ import annotations

import hashlib
import logging as std_logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from transformers.utils import logging

from .evaluate import build_batch
from .hub import TESTBED
from .modeling.token_selectors import available_selectors, get_selector_class

logger = logging.get_logger(__name__)

MAX_INPUT_SIDE = 2048  # larger uploads are shrunk first (aspect kept); the processor then resizes as always
OVERLAY_SIDE = 448  # longer side of the overlay image, in pixels
KEPT_OUTLINE = (255, 40, 40, 255)
DROPPED_SHADE = (0, 0, 0, 160)


def bundled_testbed() -> SimpleNamespace:
    """What the Space's default model takes from the testbed example package (`examples/testbed`, installed as
    `hf_tokenprune_testbed`): imported only when the Space runs `--model testbed`, the one place that names it."""
    from hf_tokenprune_testbed.model import BUNDLED_TASK, DEFAULT_ADAPTERS, build_batch, load_testbed
    from hf_tokenprune_testbed.scenes import task_split

    from .evaluate import first_word
    from .processing import load_processor

    return SimpleNamespace(
        adapters=DEFAULT_ADAPTERS,
        build_batch=build_batch,
        first_word=first_word,
        load_processor=load_processor,
        load_testbed=load_testbed,
        make_split=lambda split, n: task_split(split, n, BUNDLED_TASK),  # the bundled VLM's task
    )


class InputError(ValueError):
    """A problem with what the user gave (shown in the page as is, never as a stack trace)."""


# ---------------------------------------------------------------------------------------------- input checks
def read_image(source: str | Path | Image.Image | None) -> tuple[Image.Image, str | None]:
    """(RGB image, note or None) from a file path or image; a very large one is shrunk to `MAX_INPUT_SIDE` first.

    Raises `InputError` with a readable message for no image, an unreadable file or one too large to decode.
    """
    if source is None or source == "":
        raise InputError("No image: upload one, paste one, or pick an example below.")
    name = Path(source).name if isinstance(source, (str, Path)) else "the image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size is handled below
            image = Image.open(source) if isinstance(source, (str, Path)) else source
            width, height = image.size
            image.draft("RGB", (MAX_INPUT_SIDE, MAX_INPUT_SIDE))  # JPEG decodes at a reduced scale directly
            if max(width, height) > MAX_INPUT_SIDE:  # shrink before the RGB copy: 10,000 px squared is 300 MB in RGB
                if image.mode not in ("RGB", "RGBA", "L"):
                    image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGBA")
                image.thumbnail((MAX_INPUT_SIDE, MAX_INPUT_SIDE), Image.BICUBIC)
            image = image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise InputError(f"{name} is too large to decode safely ({error}). Try a smaller image.") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"{name} is not an image this app can read (use PNG, JPEG, WebP, ...).") from error
    note = None
    if image.size != (width, height):
        note = f"The image is {width} x {height} px; it was shrunk to {image.width} x {image.height} first."
    return image, note


def check_question(question: str | None) -> str:
    question = (question or "").strip()
    if not question:
        raise InputError("The question is empty: type a question about the image.")
    return question


def budget_from(fraction: float | None, tokens: float | int | None) -> float | int:
    """The `prune_budget` of the UI: the token count when it is >= 1, else the fraction."""
    if tokens not in (None, 0, 0.0):
        if float(tokens) != int(tokens) or tokens < 1:
            raise InputError(f"Token count must be a whole number >= 1 (or 0 to use the fraction), got {tokens}.")
        return int(tokens)
    if fraction is None or not 0.0 < float(fraction) <= 1.0:
        raise InputError(f"Budget must be a fraction in (0, 1], got {fraction}.")
    return float(fraction)


# ---------------------------------------------------------------------------------------------- the overlay
def kept_token_overlay(image: Image.Image, grid_hw: tuple[int, int], keep: torch.Tensor) -> Image.Image:
    """`image` stretched over the (rows, cols) token grid, dropped cells dimmed and kept ones outlined.

    keep: (rows * cols,) bool, row-major. The processor maps the whole image onto the grid, so cell (r, c) covers the
    same fraction of the image at any size or aspect ratio.
    """
    rows, cols = grid_hw
    if keep.numel() != rows * cols:
        raise ValueError(f"{keep.numel()} keep flags for a {rows} x {cols} token grid")
    cell = max(4, OVERLAY_SIDE // max(rows, cols))
    canvas = image.convert("RGB").resize((cols * cell, rows * cell), Image.BICUBIC).convert("RGBA")
    shade = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(shade)
    outline = max(1, cell // 14)
    for index, kept in enumerate(keep.tolist()):
        row, col = divmod(index, cols)
        box = (col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1)
        if kept:
            draw.rectangle(box, outline=KEPT_OUTLINE, width=outline)
        else:
            draw.rectangle(box, fill=DROPPED_SHADE)
    return Image.alpha_composite(canvas, shade).convert("RGB")


def token_grid(model, inputs) -> tuple[int, int] | None:
    """(rows, cols) of the first image's visual tokens as the language model sees them, when the layout is known:
    Qwen2-VL style `image_grid_thw` (one token per merged patch group), else a square grid (LLaVA-1.5 style)."""
    if "image_grid_thw" in inputs:
        _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
        merge = model.config.vision_config.spatial_merge_size
        return grid_h // merge, grid_w // merge
    count = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    side = int(round(count**0.5))
    return (side, side) if side * side == count else None


# ---------------------------------------------------------------------------------------------- the models
@dataclass
class RunResult:
    """One answer: `kept` / `total` visual tokens, TTFT in seconds (median), KV-cache bytes after prefill."""

    method: str
    budget: float | int
    answer: str
    kept: int
    total: int
    ttft_s: float
    kv_cache_bytes: int
    overlay: Image.Image | None


def _answer_text(processor, new_tokens: torch.Tensor) -> str:
    return processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()


class SpaceModel:
    """The pruned models of one Space and how to prompt them.

    models: {method: pruned model that runs it}; learned methods need their own model (its trained selector),
    training-free ones run on any of them through `prune_method`. `inputs(image, question)` builds the model inputs
    and `decode(processor, new_tokens)` the answer.
    """

    def __init__(
        self,
        name: str,
        models: dict[str, Any],
        processor,
        inputs: Callable[[Image.Image, str], Any],
        decode: Callable[[Any, torch.Tensor], str] = _answer_text,
        max_new_tokens: int = 32,
        hub_id: str | None = None,
    ) -> None:
        self.name, self.models, self.processor = name, models, processor
        self.inputs, self.decode, self.max_new_tokens, self.hub_id = inputs, decode, max_new_tokens, hub_id
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        for model in {id(model): model for model in models.values()}.values():
            model.to(self.device).eval()

    @classmethod
    def load(cls, model: str = TESTBED, max_new_tokens: int | None = None) -> SpaceModel:
        """`model`: "testbed" (the bundled model and its three learned selectors) or a pruned repo (Hub id or folder
        written by `save_pretrained`), which runs its own method and every training-free one."""
        return cls._testbed(max_new_tokens) if model == TESTBED else cls._pruned_repo(model, max_new_tokens)

    @classmethod
    def _testbed(cls, max_new_tokens: int | None) -> SpaceModel:
        from . import get_pruned_model

        bed = bundled_testbed()
        base, processor = bed.load_testbed()
        models = {method: get_pruned_model(base, str(folder)) for method, folder in bed.adapters.items()}
        return cls(
            "bundled testbed Qwen2.5-VL (synthetic VQA, one-word answers)",
            models,
            processor,
            inputs=lambda image, question: bed.build_batch(processor, [image], [question]),
            decode=lambda processor, new_tokens: bed.first_word(_answer_text(processor, new_tokens)),
            max_new_tokens=max_new_tokens or 2,
        )

    @classmethod
    def _pruned_repo(cls, model_ref: str, max_new_tokens: int | None) -> SpaceModel:
        from .model import load_pruned_repo

        model, processor = load_pruned_repo(model_ref)
        return cls(
            model_ref,
            {model.token_prune_config.method: model},
            processor,
            inputs=lambda image, question: build_batch(processor, [image], [question]),
            max_new_tokens=max_new_tokens or 32,
            hub_id=model_ref if not Path(model_ref).exists() else None,
        )

    @property
    def methods(self) -> list[str]:
        """Every registered method this Space can run: its learned ones, then all training-free ones."""
        free = [name for name in available_selectors() if not get_selector_class(name).trainable]
        return sorted(self.models) + [name for name in free if name not in self.models]

    def model_for(self, method: str):
        if method not in self.methods:
            raise InputError(f"Method {method!r} cannot run on this model; choose one of {self.methods}.")
        return self.models.get(method, next(iter(self.models.values())))

    def generate(self, model, inputs, max_new_tokens: int, **prune_kwargs):
        with torch.inference_mode():
            return model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True, **prune_kwargs
            )

    def time_to_first_token(self, model, inputs, repeats: int, **prune_kwargs) -> tuple[float, int]:
        """(median seconds of `generate(max_new_tokens=1)` after a warm-up, KV-cache bytes after prefill)."""
        from .cost import cache_bytes

        output = self.generate(model, inputs, 1, **prune_kwargs)  # warm-up
        times = []
        for _ in range(repeats):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            output = self.generate(model, inputs, 1, **prune_kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times), cache_bytes(output.past_key_values)[0]

    def run(
        self, image: Image.Image, question: str, method: str, budget: float | int, timing_repeats: int = 3
    ) -> RunResult:
        """Answer with `prune_method=method, prune_budget=budget` (`budget=1.0`: the unpruned base model)."""
        model = self.model_for(method)
        inputs = self.inputs(image, question).to(self.device)
        prune_kwargs = dict(prune_method=method, prune_budget=budget)
        output = self.generate(model, inputs, self.max_new_tokens, **prune_kwargs)
        answer = self.decode(self.processor, output.sequences[:, inputs["input_ids"].shape[1] :])
        visual = inputs["input_ids"][0] == model.config.image_token_id
        keep = output.keep_mask[0][visual].cpu()
        ttft, kv_bytes = self.time_to_first_token(model, inputs, timing_repeats, **prune_kwargs)
        grid = token_grid(model, inputs)
        overlay = kept_token_overlay(image, grid, keep) if grid is not None else None
        return RunResult(method, budget, answer, int(keep.sum()), int(visual.sum()), ttft, kv_bytes, overlay)


def example_images(count: int, folder: str | Path) -> list[tuple[str, str]]:
    """[(PNG path, question)] of the first `count` testbed test-split examples, written into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for example in bundled_testbed().make_split("test", count):
        # Named by content: the folder outlives a process, and the same seed draws another image in another task
        # (a stale v1 image once stood in for the v2 one of the same seed and kind).
        digest = hashlib.sha256(example.image.tobytes()).hexdigest()[:16]
        path = folder / f"testbed-{example.seed}-{example.kind}-{digest}.png"
        if not path.is_file():
            example.image.save(path)
        examples.append((str(path), example.question))
    return examples


# ---------------------------------------------------------------------------------------------- the page
def _mebibytes(count: int) -> str:
    return f"{count / 2**20:.2f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def _budget_text(budget: float | int) -> str:
    return f"{budget:g} of each image's tokens" if isinstance(budget, float) else f"{budget} tokens per image"


def summary_markdown(unpruned: RunResult, pruned: RunResult) -> str:
    speedup = unpruned.ttft_s / pruned.ttft_s if pruned.ttft_s > 0 else float("nan")
    return "\n".join(
        [
            f"**Prefill speed-up: {speedup:.2f}x** (`{pruned.method}`, budget {_budget_text(pruned.budget)})",
            "",
            "| | unpruned | pruned |",
            "|---|---|---|",
            f"| answer | {unpruned.answer or '(empty)'} | {pruned.answer or '(empty)'} |",
            f"| time to first token | {unpruned.ttft_s * 1e3:.1f} ms | {pruned.ttft_s * 1e3:.1f} ms |",
            f"| visual tokens | {unpruned.total} | {pruned.kept} of {pruned.total} |",
            f"| KV cache after prefill | {_mebibytes(unpruned.kv_cache_bytes)} | {_mebibytes(pruned.kv_cache_bytes)} |",
            "",
            f"Kept {pruned.kept} of {pruned.total} visual tokens.",
        ]
    )


def _on_gpu(function: Callable) -> Callable:
    """`spaces.GPU(function)` on a Hugging Face GPU Space (ZeroGPU), `function` itself elsewhere."""
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(function)


def _readable(error: Exception) -> str:
    if isinstance(error, InputError):
        return f"**Input problem:** {error}"
    if isinstance(error, (ValueError, TypeError)):
        return f"**Cannot run this:** {error}"
    logger.error("Space request failed", exc_info=error)
    return f"**Something went wrong** ({type(error).__name__}); the app is still running, try again."


def build_app(space_model: SpaceModel, examples: list[tuple[str, str]], timing_repeats: int = 3):
    """The Gradio Blocks of the Space (not launched)."""
    import gradio as gr

    def lenient(preprocess: Callable) -> Callable:
        """An image component's preprocess that passes an unreadable upload on as its path, so that `read_image`
        can say what is wrong with it (Gradio's own error would be a bare "Error")."""

        def preprocess_or_path(payload):
            try:
                return preprocess(payload)
            except Exception:
                return None if payload is None else str(payload.path)

        return preprocess_or_path

    def run_one(image_path, question, method, fraction, tokens, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for progress
        empty = ("", "", "", None)
        try:
            progress(0.0, desc="Reading the input")
            question = check_question(question)
            budget = budget_from(fraction, tokens)
            image, note = read_image(image_path)
            progress(0.2, desc="Unpruned model")
            unpruned = space_model.run(image, question, method, 1.0, timing_repeats)
            progress(0.6, desc=f"Pruned with {method}")
            pruned = space_model.run(image, question, method, budget, timing_repeats)
        except Exception as error:  # every failure becomes a message in the page
            return (_readable(error), *empty)
        status = f"Done: `{method}` kept {pruned.kept} of {pruned.total} visual tokens." + (f" {note}" if note else "")
        return status, unpruned.answer, pruned.answer, summary_markdown(unpruned, pruned), pruned.overlay

    def compare_all(image_path, question, fraction, tokens, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for progress
        try:
            question = check_question(question)
            budget = budget_from(fraction, tokens)
            image, note = read_image(image_path)
            rows, overlays = [], []
            for method in progress.tqdm(space_model.methods, desc="Methods"):
                result = space_model.run(image, question, method, budget, timing_repeats)
                rows.append([method, result.answer, f"{result.kept} of {result.total}", round(result.ttft_s * 1e3, 1)])
                if result.overlay is not None:
                    overlays.append((result.overlay, f"{method}: {result.answer} ({result.kept} kept)"))
        except Exception as error:  # every failure becomes a message in the page
            return _readable(error), None, []
        status = f"Compared {len(rows)} methods at budget {_budget_text(budget)}." + (f" {note}" if note else "")
        return status, rows, overlays

    methods = space_model.methods
    with gr.Blocks(title="hf-tokenprune: what visual-token pruning keeps") as app:
        gr.Markdown(
            "# What visual-token pruning keeps, and what it costs\n"
            f"Model: **{space_model.name}**. Pick an example (or upload / paste an image), ask a question, choose a "
            "method and a budget, and press **Run**: the answer unpruned and pruned, side by side, and the kept "
            "visual tokens outlined on the image (dropped ones dimmed)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    type="filepath",
                    image_mode=None,  # pass the upload's path on as is; `read_image` decodes (and shrinks) it once
                    sources=["upload", "clipboard"],
                    label="Image",
                    elem_id="image",
                    height=280,
                )
                image.preprocess = lenient(image.preprocess)
                question = gr.Textbox(label="Question", elem_id="question", max_lines=2)
                gr.Examples(
                    examples=[list(pair) for pair in examples],
                    inputs=[image, question],
                    label="Examples: testbed task images and their questions (click one)",
                    examples_per_page=4,
                )
                method = gr.Dropdown(methods, value=methods[0], label="Method", elem_id="method")
                with gr.Row():
                    fraction = gr.Slider(0.01, 1.0, value=0.2, step=0.01, label="Budget (fraction)", elem_id="budget")
                    tokens = gr.Number(
                        value=0,
                        precision=0,
                        minimum=0,
                        label="or tokens per image (0: use the fraction)",
                        elem_id="tokens",
                    )
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="run")
                    compare_button = gr.Button("Compare all methods", elem_id="compare")
            with gr.Column(scale=1):
                status = gr.Markdown("Pick an example and press **Run**.", elem_id="status")
                with gr.Row():
                    unpruned_answer = gr.Textbox(label="Unpruned answer", elem_id="answer-unpruned", interactive=False)
                    pruned_answer = gr.Textbox(label="Pruned answer", elem_id="answer-pruned", interactive=False)
                summary = gr.Markdown(elem_id="summary")
                overlay = gr.Image(label="Kept visual tokens", type="pil", elem_id="overlay", interactive=False)
        with gr.Accordion("Compare all methods at this budget", open=True):
            table = gr.Dataframe(
                headers=["method", "answer", "kept tokens", "TTFT (ms)"], elem_id="compare-table", interactive=False
            )
            gallery = gr.Gallery(label="Kept tokens per method", columns=4, elem_id="compare-gallery")
        run_button.click(
            _on_gpu(run_one),
            [image, question, method, fraction, tokens],
            [status, unpruned_answer, pruned_answer, summary, overlay],
        )
        compare_button.click(_on_gpu(compare_all), [image, question, fraction, tokens], [status, table, gallery])
    return app


# ---------------------------------------------------------------------------------------------- commands
@dataclass
class SpaceArguments:
    """Serve the Space app locally (`hf-tokenprune space`).

    Fields: model, host, port, share, queue_size, examples, timing_repeats, max_new_tokens.
    """

    model: str = field(
        default=TESTBED,
        metadata={
            "help": "'testbed' (bundled, offline) or a pruned repo: Hub id or folder written by save_pretrained."
        },
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0 for every interface)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on (0: a free one)."})
    share: bool = field(default=False, metadata={"help": "Also open a public gradio.live link."})
    queue_size: int = field(default=16, metadata={"help": "Requests that may wait in the queue (more are refused)."})
    examples: int = field(default=8, metadata={"help": "Testbed task images offered as examples."})
    timing_repeats: int = field(default=3, metadata={"help": "Timed runs per answer for the TTFT (median)."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Answer length (default: 2 for the testbed, 32 otherwise)."}
    )

    def __post_init__(self):
        if self.port < 0 or self.port > 65535:
            raise ValueError(f"`port` must be in [0, 65535], got {self.port}")
        for name in ("queue_size", "examples", "timing_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")


def launch_space(args: SpaceArguments, block: bool = True):
    """Build and launch the app; returns the Gradio app (serving in the background when `block` is False)."""
    space_model = SpaceModel.load(args.model, args.max_new_tokens)
    examples_dir = Path(tempfile.gettempdir()) / "hf-tokenprune-space-examples"
    app = build_app(space_model, example_images(args.examples, examples_dir), args.timing_repeats)
    std_logging.getLogger("httpx").setLevel(std_logging.WARNING)  # one line per request otherwise
    app.queue(max_size=args.queue_size, default_concurrency_limit=1)
    app.launch(
        server_name=args.host,
        server_port=args.port or None,
        share=args.share,
        max_file_size="50mb",
        allowed_paths=[str(examples_dir)],
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return app


def run_space(args: SpaceArguments):
    return launch_space(args, block=True)
