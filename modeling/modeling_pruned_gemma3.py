"""`PrunedGemma3ForConditionalGeneration`: stock Gemma 3 plus `prune_budget=` in forward and generate.

Selection unit: one image block, i.e. the `mm_tokens_per_image` soft tokens between one `<start_of_image>` /
`<end_of_image>` pair. Pan-and-scan crops are image blocks of their own (the processor gives each crop its own
block and its own row of `pixel_values`), so the budget applies to the original view and to every crop separately;
`prune_budget_scope="sample"` pools them.

What differs from the other architectures:

- Bidirectional attention within an image: the stock mask lets tokens of one image block (a run of
  `token_type_ids == 1`) see each other both ways. `token_type_ids` are compacted with the kept positions
  (`per_token_input_names`), so the kept tokens of one image still form one block and the stock mask builder makes
  exactly the mask it makes for the kept sequence; blocks stay apart because `<start_of_image>` / `<end_of_image>`
  are text tokens and never pruned.
- Sliding-window layers count kept tokens: a windowed layer's window is measured over the compacted sequence (the
  last `sliding_window` kept tokens, as the stock model does on any sequence it is given), not over the caller's
  positions. Rotary positions stay the unpruned ones. So a pruned call equals the stock model fed the kept sequence
  (at the unpruned positions, with the compacted `token_type_ids`); it equals the full sequence with dropped tokens
  masked out (contract line 3) whenever the window covers the prompt, and otherwise the masked oracle's windowed
  layers must count kept tokens too. This is what the cache can hold (the sliding cache keeps the last
  `sliding_window` entries of the kept sequence) and what every attention kernel, flash included, computes.
- The text embedding scales by sqrt(hidden) inside `embed_tokens`; `plan_pruning` embeds with the stock module, and
  the image features are scattered unscaled, as in the stock forward.

`vision_features` (autoselect, reconstruction) are the pooled SigLIP features, one (vision_hidden,) row per soft
token: the projector's average pooling is fixed and its learned part (RMSNorm + linear) reads only the pooled row,
so that row is everything the projector uses. `token_pixels` are the (k * patch)^2 pixels each pooled token covers.
"""

from __future__ import annotations

import torch
from transformers import Gemma3ForConditionalGeneration
from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

from .architectures import register_pruned_class
from .hub_io import PrunedHubMixin
from .pruning import ArchitectureHooks, TokenPruningMixin, VisualSegment


class Gemma3PruneHooks(ArchitectureHooks):
    vision_input_names = ("pixel_values",)
    per_token_input_names = ("token_type_ids",)

    def visual_token_ids(self, model) -> tuple[int, ...]:
        return (model.config.image_token_id,)

    def vision_feature_dim(self, config) -> int:
        return config.vision_config.hidden_size

    def encode(self, model, input_ids, inputs, need_features) -> list[VisualSegment]:
        projector = model.model.multi_modal_projector
        recorded: list[torch.Tensor] = []
        handle = None
        if need_features:
            # The norm's input is the average-pooled tower output, one row per soft token.
            handle = projector.mm_soft_emb_norm.register_forward_hook(lambda mod, args, out: recorded.append(args[0]))
        try:
            embeds = model.model.get_image_features(inputs["pixel_values"]).pooler_output
        finally:
            if handle is not None:
                handle.remove()
        features = recorded[0] if need_features else [None] * embeds.shape[0]
        side = projector.tokens_per_side
        grid_hw = (side, side) if side * side == embeds.shape[1] else None
        return [
            VisualSegment(image_embeds, image_features, model.config.image_token_id, grid_hw)
            for image_embeds, image_features in zip(embeds, features, strict=True)
        ]

    def project_features(self, model, features):
        projector = model.model.multi_modal_projector
        normed = projector.mm_soft_emb_norm(features)
        return torch.matmul(normed, projector.mm_input_projection_weight).type_as(features)

    def _token_side_px(self, model) -> int:
        projector = model.model.multi_modal_projector
        return projector.kernel_size * model.config.vision_config.patch_size

    def token_pixel_dim(self, model):
        return model.config.vision_config.num_channels * self._token_side_px(model) ** 2

    def token_pixels(self, model, inputs):
        # A pooled token averages a k x k group of patches: the (k * patch)^2 pixels under it, in raster order.
        side = self._token_side_px(model)
        patches = torch.nn.functional.unfold(inputs["pixel_values"], kernel_size=side, stride=side)
        return list(patches.transpose(1, 2))

    def attention_allowed(self, model, padding_mask, language_inputs):
        # The stock rules: full layers OR(causal, same image block); sliding layers also bound the look-back.
        allowed = super().attention_allowed(model, padding_mask, language_inputs)
        if language_inputs.get("token_type_ids") is not None:
            blocks = get_block_sequence_ids_for_mask(language_inputs["token_type_ids"], device=padding_mask.device)
            same_block = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)
            allowed = allowed | (same_block & padding_mask.bool()[:, None, :])
        positions = torch.arange(padding_mask.shape[-1], device=padding_mask.device)
        look_back = positions[:, None] - positions[None, :] < model.config.get_text_config().sliding_window
        return {"full_attention": allowed, "sliding_attention": allowed & look_back}


class PrunedGemma3ForConditionalGeneration(TokenPruningMixin, PrunedHubMixin, Gemma3ForConditionalGeneration):
    prune_hooks = Gemma3PruneHooks()


register_pruned_class(PrunedGemma3ForConditionalGeneration)

__all__ = ["Gemma3PruneHooks", "PrunedGemma3ForConditionalGeneration"]
