"""SmolVLM / Idefics3 specifics: views of an image found in `input_ids`, padding views, `pixel_attention_mask`,
the stock processor's inputs, Idefics3 through the same hooks, and training through `hf-tokenprune train`.

Oracles: the stock model (the same forward with dropped tokens masked out of attention), the image processor's own
row / column counts, one-by-one runs, and inputs rebuilt by hand in the layout the processor writes.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_training import write_records
from transformers import Idefics3ForConditionalGeneration

from hf_tokenprune import (
    PrunedIdefics3ForConditionalGeneration,
    PrunedSmolVLMForConditionalGeneration,
    TokenPruneConfig,
    get_pruned_model,
)
from hf_tokenprune.modeling.modeling_pruned_smolvlm import views_per_image
from hf_tokenprune.testing import (
    BUILDERS,
    IMAGE_ID,
    IMAGE_SIZES,
    PAD,
    SMOLVLM_FAKE,
    SMOLVLM_VIEW_TOKENS,
    build_inputs,
    make_samples,
    smolvlm_image_token_counts,
    tiny_idefics3,
    tiny_processor,
)

NEW_TOKENS = 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base():
    return BUILDERS["smolvlm"]()


def masked_reference(base_model, inputs: dict, keep_mask: torch.Tensor) -> torch.Tensor:
    """Contract line 3's oracle: the stock forward on everything, dropped tokens zero in a 2-D attention mask."""
    mask = inputs["attention_mask"]
    masked = dict(inputs, attention_mask=mask * keep_mask.long())
    masked["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        return base_model(**masked).logits


def assert_drop_equals_mask(model, base_model, inputs: dict, budget=0.3) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs, prune_budget=budget)
    assert not out.keep_mask.all()
    reference = masked_reference(base_model, inputs, out.keep_mask)
    compared = out.keep_mask & inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[compared], reference[compared], atol=1e-4, rtol=0)
    return out.keep_mask


def picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ------------------------------------------------------------------------------------------- views of an image
def test_views_are_grouped_as_the_processor_split_the_images():
    """Oracle: the image processor's own rows / cols per image -> rows * cols sub-images + 1 global view each."""
    processor = tiny_processor("smolvlm", do_resize=False)  # at their own size, small images are not split
    sizes = [(16, 16), (8, 8), (8, 20), (24, 12)]
    images = [picture(h, w, seed) for seed, (h, w) in enumerate(sizes)]
    text = "<s> what <image> <image> is the <image> shape <image> yes"
    inputs = processor(text=[text], images=[images], return_tensors="pt")
    layout = processor.image_processor(images=[images], return_row_col_info=True)
    expected = [
        [SMOLVLM_VIEW_TOKENS] * (rows * cols + 1)
        for rows, cols in zip(layout["rows"][0], layout["cols"][0], strict=True)
    ]
    assert len({len(views) for views in expected}) > 1, "split and unsplit images both occur"
    assert views_per_image(inputs["input_ids"], IMAGE_ID) == expected
    assert smolvlm_image_token_counts(inputs["input_ids"]) == [sum(views) for views in expected]


def test_views_are_found_when_the_tags_are_several_text_tokens():
    """SmolVLM-Instruct's tokenizer spells `<global-img>` / `<row_r_col_c>` in ordinary text tokens: `<`, words, `>`.

    Built by hand in the processor's layout, with tags sharing their first and last tokens (the worst case).
    """
    less, greater, underscore, newline = 4, 5, 6, 7
    row_col = {(r, c): [less, 10, underscore, 10 + r, underscore, 11, underscore, 10 + c, greater] for r in (1, 2)
               for c in (1, 2)}  # fmt: skip
    global_tag = [less, 12, underscore, 13, greater]
    view = [IMAGE_ID] * 3

    def split_image(rows: int, cols: int) -> list[int]:
        tokens = []
        for r in range(1, rows + 1):
            for c in range(1, cols + 1):
                tokens += [SMOLVLM_FAKE, *row_col[r, c], *view]
            tokens += [newline]
        return tokens + [newline, SMOLVLM_FAKE, *global_tag, *view, SMOLVLM_FAKE]

    def single_image() -> list[int]:
        return [SMOLVLM_FAKE, *global_tag, *view, SMOLVLM_FAKE]

    rows = [
        [20, 21, *split_image(2, 2), *single_image(), 22, *split_image(1, 2), 23],
        [PAD] * 20 + [20, *single_image(), *single_image(), 24],
        [PAD] * 30 + [20, 21, 22],
    ]
    length = max(map(len, rows))
    input_ids = torch.tensor([[PAD] * (length - len(row)) + row for row in rows])
    assert views_per_image(input_ids, IMAGE_ID) == [[3] * 5, [3], [3] * 3, [3], [3]]


# ------------------------------------------------------------------------------------------- vision inputs
@pytest.mark.parametrize("method", ["divprune", "visionselector", "autoselect"])
def test_padding_views_are_skipped(base, method):
    """Extra all-zero views (masked out) in `pixel_values` change nothing: the stock model skips them, so do we."""
    model = get_pruned_model(base, TokenPruneConfig(method=method))
    inputs = build_inputs("smolvlm", make_samples([2, 1], IMAGE_SIZES["smolvlm"]))
    padded = dict(inputs)
    padded["pixel_values"] = torch.nn.functional.pad(inputs["pixel_values"], (0, 0, 0, 0, 0, 0, 0, 3))
    padded["pixel_attention_mask"] = torch.nn.functional.pad(inputs["pixel_attention_mask"], (0, 0, 0, 0, 0, 3))
    with torch.no_grad():
        out, out_padded = model(**inputs, prune_budget=0.3), model(**padded, prune_budget=0.3)
    assert torch.equal(out.keep_mask, out_padded.keep_mask)
    torch.testing.assert_close(out.logits, out_padded.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["divprune", "visionselector"])
def test_pixel_attention_mask_reaches_the_vision_tower(base, method):
    """Views with padded pixels (mask 0 on their right half, as the processor pads a smaller view): pruned equals
    the stock model given the same mask, and the mask changes what the stock model computes."""
    model = get_pruned_model(base, TokenPruneConfig(method=method))
    inputs = build_inputs("smolvlm", make_samples([2, 0, 1], IMAGE_SIZES["smolvlm"]))
    mask = inputs["pixel_attention_mask"].clone()
    mask[:, :, :, 4:] = 0
    inputs["pixel_values"] = inputs["pixel_values"] * mask[:, :, None]
    inputs["pixel_attention_mask"] = mask
    assert_drop_equals_mask(model, base, inputs)
    with torch.no_grad():
        stock_unmasked = base(**dict(inputs, pixel_attention_mask=torch.ones_like(mask))).logits
        stock_masked = base(**inputs).logits
    assert not torch.allclose(stock_unmasked, stock_masked, atol=1e-4), "the mask matters to the stock model"


def test_mismatched_placeholders_fail_as_in_the_stock_model(base):
    model = get_pruned_model(base, TokenPruneConfig(method="divprune"))
    inputs = build_inputs("smolvlm", make_samples([1], [(1, 2)]))
    input_ids = inputs["input_ids"].clone()
    input_ids[0, int(torch.nonzero(input_ids[0] == IMAGE_ID)[0, 0])] = 30  # one placeholder too few
    inputs["input_ids"] = input_ids
    with pytest.raises(Exception, match="Image features and image tokens do not match"):
        base(**inputs)
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**inputs, prune_budget=0.3)


# ------------------------------------------------------------------------------------------- processor inputs
def test_budget_and_batch_on_processor_inputs(base):
    """Real processor output (split and unsplit images, padding views): per-image budget from the image processor's
    layout, drop equals mask, and each row equals its sample alone."""
    processor = tiny_processor("smolvlm")
    model = get_pruned_model(base, TokenPruneConfig(method="dart"))
    images = [[picture(16, 16, 0), picture(8, 8, 1)], [], [picture(8, 20, 2)]]
    texts = ["<s> what <image> and <image> colour", "<s> how many star", "<s> <image> is the circle red"]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    assert not inputs["pixel_values"][1].any(), "a sample without images has only padding views"
    budget = 0.3
    keep_mask = assert_drop_equals_mask(model, base, inputs, budget)
    layout = processor.image_processor(images=images, return_row_col_info=True)
    for row, (rows, cols) in enumerate(zip(layout["rows"], layout["cols"], strict=True)):
        tokens = [(r * c + 1) * SMOLVLM_VIEW_TOKENS for r, c in zip(rows, cols, strict=True)]
        expected = sum(max(1, math.floor(budget * n + 0.5)) for n in tokens)
        assert int((keep_mask[row] & (inputs["input_ids"][row] == IMAGE_ID)).sum()) == expected
    batched = model.generate(**inputs, prune_budget=budget, max_new_tokens=NEW_TOKENS)
    for row, (text, sample) in enumerate(zip(texts, images, strict=True)):
        alone = processor(text=[text], images=[sample] if sample else None, return_tensors="pt")
        single = model.generate(**alone, prune_budget=budget, max_new_tokens=NEW_TOKENS)
        assert torch.equal(batched[row, -NEW_TOKENS:], single[0, -NEW_TOKENS:])


# ------------------------------------------------------------------------------------------- Idefics3
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["uniform", "visionselector", "reconstruction"])
def test_idefics3_uses_the_same_hooks(attn, method):
    """Idefics3 (the class of HuggingFaceTB/SmolVLM-Instruct): identity, drop equals mask, batch equals one by one."""
    base_model = tiny_idefics3(attn)
    model = get_pruned_model(base_model, TokenPruneConfig(method=method))
    assert type(model) is PrunedIdefics3ForConditionalGeneration and isinstance(model, Idefics3ForConditionalGeneration)
    samples = make_samples([2, 0, 1], IMAGE_SIZES["smolvlm"])
    inputs = build_inputs("smolvlm", samples)
    with torch.no_grad():
        assert torch.equal(model(**inputs, prune_budget=1.0).logits, base_model(**inputs).logits)
    keep_mask = assert_drop_equals_mask(model, base_model, inputs)
    counts = smolvlm_image_token_counts(inputs["input_ids"])
    kept = [int(keep_mask[(inputs["input_ids"] == IMAGE_ID)][sum(counts[:i]) : sum(counts[: i + 1])].sum())
            for i in range(len(counts))]  # fmt: skip
    assert kept == [max(1, math.floor(0.3 * n + 0.5)) for n in counts]
    batched = model.generate(**inputs, prune_budget=0.3, max_new_tokens=NEW_TOKENS)
    for row, sample in enumerate(samples):
        single = model.generate(**build_inputs("smolvlm", [sample]), prune_budget=0.3, max_new_tokens=NEW_TOKENS)
        assert torch.equal(batched[row, -NEW_TOKENS:], single[0, -NEW_TOKENS:])


@pytest.mark.parametrize("merged", [False, True])
def test_idefics3_repo_round_trip_through_remote_code(tmp_path, merged):
    """Adapter and merged repos of the Idefics3 class load with `trust_remote_code` as that class, same tokens."""
    from transformers import AutoModelForImageTextToText

    base_model = tiny_idefics3()
    model = get_pruned_model(base_model, TokenPruneConfig(method="visionselector", budget=0.3))
    with torch.no_grad():
        for parameter in model.token_selector.parameters():
            parameter.normal_(0.0, 0.5)
    base_model.save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "repo", merged=merged, base_model_name_or_path=str(tmp_path / "base"))
    config = json.loads((tmp_path / "repo" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith(
        "modeling_pruned_smolvlm.PrunedIdefics3ForConditionalGeneration"
    )
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "repo", trust_remote_code=True)
    assert type(loaded).__name__ == "PrunedIdefics3ForConditionalGeneration"
    inputs = build_inputs("smolvlm", make_samples([2, 1], IMAGE_SIZES["smolvlm"]))
    expected = model.generate(**inputs, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    got = loaded.generate(**inputs, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    assert torch.equal(got.sequences, expected.sequences) and torch.equal(got.keep_mask, expected.keep_mask)
    assert not expected.keep_mask.all()


def test_smolvlm_is_not_an_idefics3_subclass(base):
    """Two registrations, one per stock class: neither stock class inherits from the other."""
    assert type(get_pruned_model(base, TokenPruneConfig(method="random"))) is PrunedSmolVLMForConditionalGeneration
    assert not issubclass(PrunedSmolVLMForConditionalGeneration, Idefics3ForConditionalGeneration)


# ------------------------------------------------------------------------------------------- training
def test_visionselector_trains_through_the_train_command(tmp_path):
    """`hf-tokenprune train` on tiny:smolvlm: the selector moves, the base does not, the checkpoint reloads."""
    from hf_tokenprune.cli import main

    recipe = {
        "model_name_or_path": "tiny:smolvlm",
        "method": "visionselector",
        "budget": 0.25,
        "train_file": str(write_records(tmp_path)),
        "image_folder": str(tmp_path),
        "output_dir": str(tmp_path / "run"),
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "learning_rate": 0.01,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 0
    fresh = BUILDERS["smolvlm"]()
    reference = {name: tensor.clone() for name, tensor in fresh.state_dict().items()}
    trained = get_pruned_model(fresh, tmp_path / "run")
    initial = get_pruned_model(BUILDERS["smolvlm"](), TokenPruneConfig(method="visionselector")).token_selector
    assert trained.token_prune_config.base_model_type == "smolvlm"
    assert any(
        not torch.equal(weight, initial.state_dict()[name])
        for name, weight in trained.token_selector.state_dict().items()
    )
    assert all(torch.equal(tensor, reference[name]) for name, tensor in fresh.state_dict().items())
    inputs = build_inputs("smolvlm", make_samples([1], IMAGE_SIZES["smolvlm"]))
    assert_drop_equals_mask(trained, fresh, inputs, budget=0.25)
