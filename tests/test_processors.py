"""`tiny_processor`: chat template -> stock processor logic -> tiny model, offline.

Oracles: the tiny model's own vision tower (`get_image_features` on the image processor's output gives the number
of visual tokens each image must occupy, and the stock forward rejects a mismatch), samples processed one at a
time (batching and left padding), and shorter conversations (the prefix property the training collator uses).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Gemma3Processor

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.testing import (
    BOS,
    BUILDERS,
    IM_END,
    IM_START,
    IMAGE_ID,
    PAD,
    ROLE_TOKENS,
    TINY_ARCHITECTURES,
    VEND,
    VOCAB,
    VSTART,
    tiny_processor,
)

ARCHS = ["qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "internvl", "smolvlm", "llava_onevision", "gemma3"]
QWEN = ("qwen2_5_vl", "qwen3_vl")
# (height, width) in pixels; the Qwen models see them at different grid sizes, the others resize or tile them.
SIZES = {
    "qwen2_5_vl": [(16, 16), (16, 24), (32, 32), (24, 16)],
    "qwen3_vl": [(16, 16), (16, 24), (32, 32), (24, 16)],
    "llava": [(16, 16), (12, 20), (8, 8), (20, 12)],
    "llava_next": [(8, 8), (8, 14), (16, 10), (12, 12)],
    "internvl": [(16, 16), (12, 20), (8, 8), (20, 12)],
    "llava_onevision": [(8, 8), (8, 14), (16, 10), (12, 12)],
    "gemma3": [(16, 16), (12, 20), (8, 8), (20, 12)],
    "smolvlm": [(16, 16), (8, 20), (8, 8), (20, 12)],
}


def image(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def images_for(arch: str, count: int, offset: int = 0) -> list[Image.Image]:
    sizes = SIZES[arch]
    return [image(*sizes[(offset + i) % len(sizes)], seed=offset + i) for i in range(count)]


def conversation(arch: str) -> tuple[list[dict], list[Image.Image]]:
    """System prompt, then a one-image turn and a two-image turn, each answered."""
    images = images_for(arch, 3)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "a cat"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "how many"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "two yes"}]},
    ]
    return messages, images


def images_in(messages: list[dict], images: list[Image.Image]) -> list[Image.Image]:
    count = sum(item["type"] == "image" for message in messages for item in message["content"])
    return images[:count]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from intra-op threads, which spin and thrash when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = BUILDERS[arch]()
        return cache[arch]

    return get


@pytest.fixture(scope="module")
def processors():
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = tiny_processor(arch)
        return cache[arch]

    return get


def vision_tokens(model, processor, picture: Image.Image) -> int:
    """Oracle: how many LLM tokens the model's vision tower makes of `picture`, from the image processor alone."""
    pixels = processor.image_processor(images=[picture], return_tensors="pt")
    kwargs = {key: pixels[key] for key in ("pixel_values", "image_grid_thw", "image_sizes") if key in pixels}
    with torch.no_grad():
        pooled = model.get_image_features(**kwargs).pooler_output
    if isinstance(pooled, torch.Tensor):  # InternVL: (tiles, tokens per tile, hidden)
        return pooled.shape[0] * pooled.shape[1]
    return sum(features.shape[0] for features in pooled)


def process(processor, texts: list[str], images: list[list[Image.Image]]):
    flat = [picture for sample in images for picture in sample]
    if isinstance(processor, Gemma3Processor) and flat:
        # The stock Gemma 3 processor reads a flat image list as one sample's images: it takes them per sample only.
        return processor(text=texts, images=images, return_tensors="pt", padding=True)
    return processor(text=texts, images=flat or None, return_tensors="pt", padding=True)


def assert_rows(big: torch.Tensor, small: torch.Tensor, offset: int = 0) -> None:
    """`small` sits at rows `offset:` of `big` (trailing dims of `big` may be larger: LLaVA-NeXT pads crops)."""
    block = big[offset : offset + small.shape[0]]
    assert torch.equal(block[(slice(None), *(slice(0, size) for size in small.shape[1:]))], small)


@pytest.mark.parametrize("arch", ARCHS)
def test_template_renders_roles_in_order(processors, arch):
    processor = processors(arch)
    messages, _ = conversation(arch)
    messages[0] = {"role": "system", "content": "a cat"}  # plain-string content works too
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<s>")
    positions = [text.index(f"<|im_start|> {role}") for role in ("system", "user", "assistant")]
    assert positions == sorted(positions)

    ids = processor.tokenizer(text)["input_ids"]
    assert max(ids) < VOCAB and 3 not in ids, "every token is known and inside the models' vocabulary"
    roles = [ids[i + 1] for i, token in enumerate(ids) if token == IM_START]
    assert roles == [ROLE_TOKENS[message["role"]] for message in messages]
    assert ids.count(IM_END) == len(messages) and ids[0] == BOS

    prompt = processor.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    prompt_ids = processor.tokenizer(prompt)["input_ids"]
    assert prompt_ids[-2:] == [IM_START, ROLE_TOKENS["assistant"]]


@pytest.mark.parametrize("arch", ARCHS)
def test_placeholders_match_the_vision_tower(models, processors, arch):
    model, processor = models(arch), processors(arch)
    messages, images = conversation(arch)
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = process(processor, [text], [images])
    ids = inputs["input_ids"][0]

    expected = [vision_tokens(model, processor, picture) for picture in images]
    assert int((ids == model.config.image_token_id).sum()) == sum(expected)
    assert model.config.image_token_id == IMAGE_ID
    if arch in (*QWEN, "internvl", "gemma3"):  # each image framed by start/end tokens: check per image
        starts = torch.nonzero(ids == VSTART).flatten().tolist()
        ends = torch.nonzero(ids == VEND).flatten().tolist()
        assert [end - start - 1 for start, end in zip(starts, ends, strict=True)] == expected
        assert all(bool((ids[start + 1 : end] == IMAGE_ID).all()) for start, end in zip(starts, ends, strict=True))

    with torch.no_grad():
        logits = model(**inputs).logits  # the stock forward raises on a placeholder / feature mismatch
    assert logits.shape == (1, ids.shape[0], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_property(processors, arch):
    processor = processors(arch)
    messages, images = conversation(arch)
    full = process(processor, [processor.apply_chat_template(messages, tokenize=False)], [images])
    full_ids = full["input_ids"][0].tolist()
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        for head, generation in ((messages[:turn], True), (messages[: turn + 1], False)):
            text = processor.apply_chat_template(head, tokenize=False, add_generation_prompt=generation)
            part = process(processor, [text], [images_in(head, images)])
            ids = part["input_ids"][0].tolist()
            assert full_ids[: len(ids)] == ids, (turn, generation)
            assert_rows(full["pixel_values"], part["pixel_values"])
    # The prompt ends in the generation prompt, and the answer follows it in the full conversation.
    prompt = processor.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    prompt_ids = process(processor, [prompt], [images[:1]])["input_ids"][0].tolist()
    answer = processor.tokenizer("red")["input_ids"]
    assert full_ids[len(prompt_ids) : len(prompt_ids) + len(answer) + 1] == answer + [IM_END]


def batch(arch: str, processor):
    """Two prompts with different images (one and two of them; different sizes for Qwen2.5-VL)."""
    first = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape"}]}]
    second = [
        {"role": "system", "content": [{"type": "text", "text": "a dog"}]},
        {"role": "user", "content": [{"type": "text", "text": "left"}, {"type": "image"}, {"type": "image"}]},
    ]
    images = [images_for(arch, 1, offset=0), images_for(arch, 2, offset=1)]
    texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in (first, second)]
    return texts, images


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_is_left_padded_singles(models, processors, arch):
    model, processor = models(arch), processors(arch)
    texts, images = batch(arch, processor)
    if arch in QWEN:
        assert len({picture.size for sample in images for picture in sample}) == 3
    flat = process(processor, texts, images)
    batched = processor(text=texts, images=images, return_tensors="pt", padding=True)  # per-sample image lists
    if TINY_ARCHITECTURES[arch].image_block_takes_sample_count:
        # LLaVA-OneVision: only per-sample lists say which images share a sample (each of several is a base view).
        assert batched["batch_num_images"].tolist() == [len(sample) for sample in images]
        assert flat["batch_num_images"].tolist() == [1] * sum(len(sample) for sample in images)
    else:
        assert set(flat) == set(batched) and all(torch.equal(flat[key], batched[key]) for key in batched)
    singles = [
        processor(text=[text], images=[sample], return_tensors="pt") for text, sample in zip(texts, images, strict=True)
    ]

    length = batched["input_ids"].shape[1]
    assert length == max(single["input_ids"].shape[1] for single in singles)
    for row, single in enumerate(singles):
        ids, pad = single["input_ids"][0], length - single["input_ids"].shape[1]
        assert pad >= 0 and torch.equal(batched["input_ids"][row, pad:], ids)
        assert (batched["input_ids"][row, :pad] == PAD).all()
        assert batched["attention_mask"][row].tolist() == [0] * pad + [1] * ids.shape[0]
    assert any(length > single["input_ids"].shape[1] for single in singles), "one row is padded"
    offset = 0
    for single in singles:
        assert_rows(batched["pixel_values"], single["pixel_values"], offset)
        offset += single["pixel_values"].shape[0]
    assert offset == batched["pixel_values"].shape[0]
    for key in ("image_grid_thw", "image_sizes", "batch_num_images"):
        if key in batched:
            assert torch.equal(batched[key], torch.cat([single[key] for single in singles]))
    if arch in QWEN:
        assert torch.equal(batched["mm_token_type_ids"], (batched["input_ids"] == IMAGE_ID).long())

    with torch.no_grad():
        batched_logits = model(**batched).logits[:, -1]
        single_logits = torch.cat([model(**single).logits[:, -1] for single in singles])
    torch.testing.assert_close(batched_logits, single_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_generate_on_processor_inputs(models, processors, arch):
    base, processor = models(arch), processors(arch)
    texts, images = batch(arch, processor)
    inputs = process(processor, texts, images)
    model = get_pruned_model(base, TokenPruneConfig(method="divprune"))

    with torch.no_grad():
        out = model(**inputs, prune_budget=0.5)
    is_visual = inputs["input_ids"] == IMAGE_ID
    assert out.keep_mask[~is_visual].all()
    for row, sample in enumerate(images):
        counts = [vision_tokens(base, processor, picture) for picture in sample]
        expected = sum(min(n, max(1, int(0.5 * n + 0.5))) for n in counts)
        assert int(out.keep_mask[row][is_visual[row]].sum()) == expected

    sequences = model.generate(**inputs, prune_budget=0.5, max_new_tokens=2)
    length = inputs["input_ids"].shape[1]
    assert sequences.shape == (2, length + 2)
    assert torch.equal(sequences[:, :length], inputs["input_ids"])
    assert torch.equal(sequences[:, length], out.logits[:, -1].argmax(-1))


def test_chat_template_tokenize_loads_images(processors):
    """`apply_chat_template(tokenize=True)` takes the images from the messages: same inputs as the manual path."""
    processor = processors("qwen2_5_vl")
    pictures = images_for("qwen2_5_vl", 2)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": pictures[0]}, {"type": "text", "text": "what"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]},
        {"role": "user", "content": [{"type": "image", "image": pictures[1]}, {"type": "text", "text": "how"}]},
    ]
    direct = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    manual = process(processor, [text], [pictures])
    assert set(direct) == set(manual)
    for key in manual:
        assert torch.equal(direct[key], manual[key]), key


def test_internvl_dynamic_tiling(models):
    """With `max_patches`, a wide image is cut into tiles plus a thumbnail, each tile 4 tokens."""
    model, processor = models("internvl"), tiny_processor("internvl", max_patches=4)
    wide = image(8, 24, seed=3)
    inputs = processor(text=["<s> <IMG_CONTEXT> what"], images=[wide], return_tensors="pt")
    assert inputs["pixel_values"].shape[0] == 4  # 3 tiles + thumbnail
    assert int((inputs["input_ids"] == IMAGE_ID).sum()) == vision_tokens(model, processor, wide) == 16
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
