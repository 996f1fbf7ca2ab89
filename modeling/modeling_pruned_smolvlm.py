"""`PrunedSmolVLMForConditionalGeneration` (and its parent `PrunedIdefics3ForConditionalGeneration`): stock SmolVLM /
Idefics3 plus `prune_budget=` in forward and generate.

The Idefics3 family splits an image into a grid of sub-images plus a global view of the whole image (each
`image_seq_len` tokens after the connector's pixel shuffle), and the processor frames every view in text:
`<fake_token_around_image><row_r_col_c><image>...` per sub-image, `<fake_token_around_image><global-img><image>...
<fake_token_around_image>` for the global view (a video frame is a global view alone). Only the `<image>` placeholders
are visual tokens; the framing tokens are text and are never pruned.

Selection unit: one whole image, i.e. all its sub-images and its global view together (as LLaVA-NeXT's base view +
crops and InternVL's tiles + thumbnail). The budget is per image as the caller sees it, and the views overlap in
content: a per-view budget would keep the same share of an empty tile as of a busy one, and diversity-based methods
(divprune, dart) can only drop the global view's duplicates of tile content when the views are ranked together. A video
frame is its own unit. The views of one image are found in `input_ids` alone: every image ends with its global view,
whose framing tag (the tokens between `<fake_token_around_image>` and the first `<image>`) is the tag of the last view
in the row; `<fake_token_around_image>` is the token right after that view. No token id beyond `image_token_id` is
hard-coded or read from a tokenizer (`<global-img>` is several ordinary text tokens in some checkpoints).

Vision inputs: `pixel_values` (B, num_views, C, H, W) with all-zero padding views and `pixel_attention_mask`
(B, num_views, H, W); both go to the stock `get_image_features`, which drops the padding views, so a batch encodes
exactly the views of its samples one by one. Positions are the language model's 1-D positions.

Methods: every training-free method and the three learned ones. `vision_features` are the connector's pixel-shuffled
features (vision width x scale_factor**2 per LLM token), before its linear projection. Unavailable: `token_pixels`
(the pixels under each token, only the `reconstruction` recipe's optional `image_reconstruction` target): the views
that form one image are known from `input_ids`, which that hook does not receive; train with
image_reconstruction=False (the recipe refuses it when it is built, naming the argument, as for LLaVA-NeXT).
"""

from __future__ import annotations

import math

import torch
from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

from .architectures import register_pruned_class
from .hub_io import PrunedHubMixin
from .pruning import ArchitectureHooks, CaptureProjectorInput, TokenPruningMixin, VisualSegment


def placeholder_run_spans(row: list[int], token_id: int) -> list[tuple[int, int]]:
    """(start, end) of every maximal run of `token_id` in one row of ids, end exclusive."""
    spans, start = [], None
    for index, token in enumerate([*row, None]):
        if token == token_id and start is None:
            start = index
        elif token != token_id and start is not None:
            spans.append((start, index))
            start = None
    return spans


def views_per_image(input_ids: torch.Tensor, image_token_id: int) -> list[list[int]]:
    """Placeholder counts of the views of each image, row-major: [[tokens of view 1, ...], ...]. input_ids: (B, L).

    A view is a maximal run of `image_token_id`; its tag is the text between the last framing token before it and the
    run. An image's views end with its global view, whose tag is the tag of the row's last view (always a global
    view); the framing token is the token that follows that view.
    """
    images = []
    for row in input_ids.tolist():
        spans = placeholder_run_spans(row, image_token_id)
        if not spans:
            continue
        framing = row[spans[-1][1]] if spans[-1][1] < len(row) else None
        tags = []
        for (start, _), previous_end in zip(spans, [0] + [end for _, end in spans[:-1]], strict=True):
            gap = row[previous_end:start]
            opened = max((index for index, token in enumerate(gap) if token == framing), default=-1)
            tags.append(tuple(gap[opened + 1 :]))
        views: list[int] = []
        for (start, end), tag in zip(spans, tags, strict=True):
            views.append(end - start)
            if tag == tags[-1]:
                images.append(views)
                views = []
    return images


class SmolVLMPruneHooks(ArchitectureHooks):
    """SmolVLM and Idefics3 (same vision side, connector and prompt layout)."""

    vision_input_names = ("pixel_values", "pixel_attention_mask")

    def visual_token_ids(self, model) -> tuple[int, ...]:
        return (model.config.image_token_id,)

    def vision_feature_dim(self, config) -> int:
        return config.vision_config.hidden_size * config.scale_factor**2

    def project_features(self, model, features):
        return model.model.connector.modality_projection(features)

    def encode(self, model, input_ids, inputs, need_features) -> list[VisualSegment]:
        inner = model.model
        capture = CaptureProjectorInput(inner.connector.modality_projection, None, need_features)
        with capture:
            outputs = inner.get_image_features(
                pixel_values=inputs["pixel_values"], pixel_attention_mask=inputs.get("pixel_attention_mask")
            )
        embeds, features = capture.split(torch.cat(list(outputs.pooler_output)))
        token_id = model.config.image_token_id
        images = views_per_image(input_ids, token_id)
        if sum(map(sum, images)) != embeds.shape[0]:
            raise ValueError(
                # The stock message's first words, which callers (and the upstream tests) match on.
                f"Image features and image tokens do not match: `input_ids` hold {sum(map(sum, images))} image "
                f"placeholder tokens but `pixel_values` give {embeds.shape[0]} visual tokens"
            )
        side = math.isqrt(inner.image_seq_len)
        segments, offset = [], 0
        for views in images:
            size = sum(views)
            rows = slice(offset, offset + size)
            offset += size
            # Views stacked vertically: an even spread over this grid covers every view and every region of it.
            square = side * side == inner.image_seq_len and all(view == inner.image_seq_len for view in views)
            grid_hw = (len(views) * side, side) if square else None
            segments.append(
                VisualSegment(embeds[rows], None if features is None else features[rows], token_id, grid_hw)
            )
        return segments


class PrunedSmolVLMForConditionalGeneration(TokenPruningMixin, PrunedHubMixin, SmolVLMForConditionalGeneration):
    prune_hooks = SmolVLMPruneHooks()


class PrunedIdefics3ForConditionalGeneration(TokenPruningMixin, PrunedHubMixin, Idefics3ForConditionalGeneration):
    """Idefics3 (e.g. HuggingFaceTB/SmolVLM-Instruct, which is an Idefics3 checkpoint): the SmolVLM hooks unchanged."""

    prune_hooks = SmolVLMPruneHooks()


register_pruned_class(PrunedSmolVLMForConditionalGeneration)
register_pruned_class(PrunedIdefics3ForConditionalGeneration)

__all__ = [
    "PrunedIdefics3ForConditionalGeneration",
    "PrunedSmolVLMForConditionalGeneration",
    "SmolVLMPruneHooks",
    "placeholder_run_spans",
    "views_per_image",
]
