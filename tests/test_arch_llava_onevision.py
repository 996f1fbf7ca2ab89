"""LLaVA-OneVision beyond the contract suite: video frames as selection units, multi-image batches, and the
pre-projector features the `vision_features` selectors read.

Oracles: the stock model run with the dropped tokens masked out of attention (drop equals mask), the stock vision
tower and pooling called directly, and samples run one at a time.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.testing import (
    IMAGE_ID,
    IMAGE_SIZES,
    PAD,
    VIDEO_ID,
    build_inputs,
    make_llava_onevision_video_inputs,
    make_samples,
    tiny_llava_onevision,
)

METHODS = ["visionselector", "autoselect", "reconstruction", "random", "uniform", "divprune", "dart"]
NEW_TOKENS = 4
FRAMES = 3
PER_FRAME = 4  # the 4 x 4 patch grid of an 8 x 8 px frame, 2 x 2 pooled


@pytest.fixture(scope="module")
def base():
    return tiny_llava_onevision()


def pruned(base, method: str):
    model = get_pruned_model(base, TokenPruneConfig(method=method))
    if model.token_selector is not None:  # spread the near-zero initial scores so selection is decisive
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for parameter in model.token_selector.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def masked_base_inputs(inputs: dict, keep_mask: torch.Tensor) -> dict:
    """Everything unpruned, dropped tokens zero in a 2-D attention mask, positions of the full sequence."""
    mask = inputs["attention_mask"]
    return dict(
        inputs,
        attention_mask=mask * keep_mask.long(),
        position_ids=(mask.cumsum(-1) - 1).masked_fill(mask == 0, 0),
    )


def kept(budget, size: int) -> int:
    return min(size, max(1, math.floor(budget * size + 0.5))) if isinstance(budget, float) else min(budget, size)


@pytest.mark.parametrize("method", METHODS)
def test_video_frames_are_pruned_like_images(base, method):
    """Each frame's pooled tokens are one unit; the video's closing newline, a unit of one, is always kept."""
    model = pruned(base, method)
    inputs = make_llava_onevision_video_inputs(frames=FRAMES)
    video_positions = torch.nonzero(inputs["input_ids"][0] == VIDEO_ID).flatten()
    assert video_positions.numel() == FRAMES * PER_FRAME + 1
    for budget in (0.5, 0.3, 0.01, 1, 3, 10_000):
        with torch.no_grad():
            keep_mask = model(**inputs, prune_budget=budget).keep_mask[0]
        assert keep_mask[inputs["input_ids"][0] != VIDEO_ID].all(), "text is never pruned"
        per_frame = [int(keep_mask[video_positions[f * PER_FRAME : (f + 1) * PER_FRAME]].sum()) for f in range(FRAMES)]
        assert per_frame == [kept(budget, PER_FRAME)] * FRAMES
        assert keep_mask[video_positions[-1]], "the newline after the last frame"

    with torch.no_grad():
        out = model(**inputs, prune_budget=0.5)
        reference = base(**masked_base_inputs(inputs, out.keep_mask)).logits
    assert not out.keep_mask.all()
    torch.testing.assert_close(out.logits[out.keep_mask], reference[out.keep_mask], atol=1e-4, rtol=0)

    generated = model.generate(**inputs, prune_budget=0.5, max_new_tokens=NEW_TOKENS, return_dict_in_generate=True)
    expected = base.generate(**masked_base_inputs(inputs, generated.keep_mask), max_new_tokens=NEW_TOKENS)
    assert torch.equal(generated.sequences, expected)


def test_video_sample_scope_shares_one_budget(base):
    model = pruned(base, "divprune")
    inputs = make_llava_onevision_video_inputs(frames=FRAMES)
    total = FRAMES * PER_FRAME + 1
    with torch.no_grad():
        keep_mask = model(**inputs, prune_budget=0.3, prune_budget_scope="sample").keep_mask
    assert int(keep_mask[inputs["input_ids"] == VIDEO_ID].sum()) == kept(0.3, total)


def left_pad_batch(singles: list[dict]) -> dict:
    """Batch of one-sample inputs as the stock processor batches them: rows left-padded, images and crops stacked
    (crops zero-padded), `batch_num_images` per sample with images, videos stacked."""
    length = max(single["input_ids"].shape[1] for single in singles)

    def pad_row(tensor, value):
        return torch.nn.functional.pad(tensor, (length - tensor.shape[1], 0), value=value)

    batch = {
        "input_ids": torch.cat([pad_row(single["input_ids"], PAD) for single in singles]),
        "attention_mask": torch.cat([pad_row(single["attention_mask"], 0) for single in singles]),
    }
    with_images = [single for single in singles if "pixel_values" in single]
    if with_images:
        crops = max(single["pixel_values"].shape[1] for single in with_images)
        batch["pixel_values"] = torch.cat(
            [
                torch.nn.functional.pad(
                    single["pixel_values"], (0, 0, 0, 0, 0, 0, 0, crops - single["pixel_values"].shape[1])
                )
                for single in with_images
            ]
        )
        for key in ("image_sizes", "batch_num_images"):
            batch[key] = torch.cat([single[key] for single in with_images])
    videos = [single["pixel_values_videos"] for single in singles if "pixel_values_videos" in single]
    if videos:
        batch["pixel_values_videos"] = torch.cat(videos)
    return batch


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", ["visionselector", "autoselect", "divprune", "dart"])
def test_multi_image_and_video_batch_equals_one_by_one(method, attn):
    """Samples with 3, 1, 0 and 2 images (multi-image samples hold base views, a lone image is anyres) and a video."""
    model = pruned(tiny_llava_onevision(attn), method)
    singles = [
        build_inputs("llava_onevision", [sample])
        for sample in make_samples([3, 1, 0, 2], IMAGE_SIZES["llava_onevision"])
    ]
    singles.append(make_llava_onevision_video_inputs(frames=2, seed=5))
    singles.insert(1, make_llava_onevision_video_inputs(frames=2, seed=9))
    batch = left_pad_batch(singles)
    assert batch["batch_num_images"].tolist() == [3, 1, 2]
    with torch.no_grad():
        stock = model(**batch).logits[:, -1]  # no budget: the stock model accepts this batch
        batched = model(**batch, prune_budget=0.4)
    generated = model.generate(**batch, prune_budget=0.4, max_new_tokens=NEW_TOKENS)
    length = batch["input_ids"].shape[1]
    for row, single in enumerate(singles):
        single_length = single["input_ids"].shape[1]
        with torch.no_grad():
            alone = model(**single, prune_budget=0.4)
            torch.testing.assert_close(stock[row], model(**single).logits[0, -1], atol=1e-4, rtol=0)
        assert torch.equal(batched.keep_mask[row, length - single_length :], alone.keep_mask[0])
        torch.testing.assert_close(batched.logits[row, -1], alone.logits[0, -1], atol=1e-4, rtol=0)
        expected = model.generate(**single, prune_budget=0.4, max_new_tokens=NEW_TOKENS)
        assert torch.equal(generated[row, length:], expected[0, single_length:])


def test_vision_features_follow_the_stock_layout(base):
    """The `vision_features` of each token: the tower's output where the stock model projects it unchanged, zero at
    newlines (whose embedding is `image_newline`), the stock pooling of the tower's output for video frames."""
    model = pruned(base, "autoselect")
    hooks = model.prune_hooks
    images = build_inputs("llava_onevision", make_samples([2, 1], [(8, 8), (8, 14), (8, 8)]))
    video = make_llava_onevision_video_inputs(frames=FRAMES)
    vision_keys = set(hooks.vision_input_names)
    with torch.no_grad():
        image_segments = hooks.encode(
            model, images["input_ids"], {k: v for k, v in images.items() if k in vision_keys}, True
        )
        video_segments = hooks.encode(
            model, video["input_ids"], {k: v for k, v in video.items() if k in vision_keys}, True
        )
        stock_images = base.model.get_image_features(
            images["pixel_values"], images["image_sizes"], batch_num_images=images["batch_num_images"]
        ).pooler_output
        stock_video = base.model.get_video_features(video["pixel_values_videos"]).pooler_output[0]
        tower = base.model.vision_tower
        views = tower(images["pixel_values"][:, 0], output_hidden_states=True).hidden_states[-1]
        frames = tower(video["pixel_values_videos"][0], output_hidden_states=True).hidden_states[-1]

    assert len(image_segments) == 3
    for segment, embeds, view in zip(image_segments, stock_images, views, strict=True):
        assert torch.equal(segment.embeds, embeds) and segment.features.shape[0] == embeds.shape[0]
        torch.testing.assert_close(segment.features[:16], view, atol=1e-6, rtol=0)  # the base view comes first
        newline = (segment.features == 0).all(-1)
        assert torch.equal(embeds[newline], base.model.image_newline.expand(int(newline.sum()), -1))
        torch.testing.assert_close(hooks.project_features(model, segment.features), embeds, atol=1e-5, rtol=0)
    assert [int((segment.features == 0).all(-1).sum()) for segment in image_segments] == [1, 1, 4]

    assert [segment.embeds.shape[0] for segment in video_segments] == [PER_FRAME] * FRAMES + [1]
    assert all(segment.token_id == VIDEO_ID for segment in video_segments)
    assert torch.equal(torch.cat([segment.embeds for segment in video_segments]), stock_video)
    pooled = base.model.apply_pooling(frames)
    for frame, segment in enumerate(video_segments[:-1]):
        assert segment.grid_hw == (2, 2)
        torch.testing.assert_close(segment.features, pooled[frame], atol=1e-6, rtol=0)
    assert (video_segments[-1].features == 0).all()
    assert torch.equal(video_segments[-1].embeds[0], base.model.image_newline)


def test_image_units_hold_base_view_crops_and_newlines(base):
    """An image's budget covers all its tokens; an anyres image shrunk by `vision_aspect_ratio` counts its shrunk grid."""
    model = pruned(base, "uniform")
    inputs = build_inputs("llava_onevision", make_samples([1], [(16, 10)]))
    is_image = inputs["input_ids"][0] == IMAGE_ID
    with torch.no_grad():
        features = base.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
        ).pooler_output
        keep_mask = model(**inputs, prune_budget=0.25).keep_mask[0]
    assert int(is_image.sum()) == features[0].shape[0] == 16 + 6 * 5  # 8 x 6 unpadded grid shrunk to 6 x 4
    assert int(keep_mask[is_image].sum()) == kept(0.25, int(is_image.sum()))


def test_training_projection_is_exact_on_unaltered_features(base):
    """Shrunk anyres crops and pooled frames are resampled after the stock projector: projecting the resampled
    features alone is off, `project_segment_features` (what autoselect trains through) gives the stock tokens."""
    model = pruned(base, "autoselect")
    hooks = model.prune_hooks
    vision_keys = set(hooks.vision_input_names)
    segments = []
    for inputs in (
        build_inputs("llava_onevision", make_samples([1], [(16, 10)])),
        make_llava_onevision_video_inputs(frames=FRAMES),
    ):
        vision = {key: value for key, value in inputs.items() if key in vision_keys}
        with torch.no_grad():
            segments += hooks.encode(model, inputs["input_ids"], vision, need_features=True)
    resampled = segments[:-1]  # the shrunk image and the pooled frames; the video's newline is not resampled
    for segment in resampled:
        with torch.no_grad():
            exact = hooks.project_segment_features(model, segment, segment.features)
            plain = hooks.project_features(model, segment.features)
        torch.testing.assert_close(exact, segment.embeds, atol=1e-5, rtol=0)
        assert not torch.allclose(plain, segment.embeds, atol=1e-3)
    features = resampled[0].features.clone().requires_grad_()
    hooks.project_segment_features(model, resampled[0], features).sum().backward()
    assert features.grad.abs().sum() > 0, "the gradient flows through the projector"


def test_image_only_processor_saves_and_reloads(tmp_path):
    """The processor without a video processor round-trips with its settings (tokens per view, anyres_max)."""
    import numpy as np
    from PIL import Image

    from hf_tokenprune.processing import ImageOnlyLlavaOnevisionProcessor, load_processor
    from hf_tokenprune.testing import tiny_processor

    processor = tiny_processor("llava_onevision")
    processor.save_pretrained(tmp_path)
    loaded = load_processor(tmp_path)
    assert type(loaded) is ImageOnlyLlavaOnevisionProcessor
    pictures = [
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 10, 3), dtype=np.uint8)) for seed in (0, 1)
    ]
    texts = ["<s> <image> what", "<s> <image> <image> how many"]
    kwargs = dict(text=texts, images=[pictures[:1], pictures], return_tensors="pt", padding=True)
    expected, got = processor(**kwargs), loaded(**kwargs)
    assert set(got) == set(expected) and all(torch.equal(got[key], expected[key]) for key in expected)
    assert int((got["input_ids"][0] == IMAGE_ID).sum()) == 16 + 6 * 5  # anyres, shrunk by anyres_max_2


def test_video_placeholder_without_video_inputs_stays_text(base):
    """The stock model matches video placeholders only when `pixel_values_videos` is given (an upstream test's random
    ids hold one); pruned, such a token is text: kept, and drop equals mask still holds."""
    model = pruned(base, "divprune")
    inputs = build_inputs("llava_onevision", make_samples([2, 0, 1], IMAGE_SIZES["llava_onevision"]))
    text_column = int(torch.nonzero(inputs["input_ids"][0] != IMAGE_ID)[-1])
    inputs["input_ids"][0, text_column] = VIDEO_ID
    with torch.no_grad():
        out = model(**inputs, prune_budget=0.3)
        reference = base(**masked_base_inputs(inputs, out.keep_mask)).logits
    assert out.keep_mask[0, text_column] and not out.keep_mask.all()
    compared = out.keep_mask & inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[compared], reference[compared], atol=1e-4, rtol=0)
