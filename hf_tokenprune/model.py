"""Attach a selector to a stock `transformers` VLM: `get_pruned_model`."""

from __future__ import annotations

from transformers import (
    InternVLForConditionalGeneration,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
)

from .modeling.configuration_token_prune import TokenPruneConfig
from .modeling.modeling_pruned_internvl import PrunedInternVLForConditionalGeneration
from .modeling.modeling_pruned_llava import PrunedLlavaForConditionalGeneration
from .modeling.modeling_pruned_llava_next import PrunedLlavaNextForConditionalGeneration
from .modeling.modeling_pruned_qwen2_5_vl import PrunedQwen2_5_VLForConditionalGeneration
from .modeling.pruning import TokenPruningMixin

# Stock class -> drop-in subclass. Checked most-derived first, so a subclass of a stock class also maps.
PRUNED_CLASSES: dict[type[PreTrainedModel], type[TokenPruningMixin]] = {
    Qwen2_5_VLForConditionalGeneration: PrunedQwen2_5_VLForConditionalGeneration,
    LlavaNextForConditionalGeneration: PrunedLlavaNextForConditionalGeneration,
    LlavaForConditionalGeneration: PrunedLlavaForConditionalGeneration,
    InternVLForConditionalGeneration: PrunedInternVLForConditionalGeneration,
}


def get_pruned_model(base_model: PreTrainedModel, config: TokenPruneConfig | None = None) -> TokenPruningMixin:
    """Return the drop-in pruned subclass of `base_model`, sharing its weights, with `config`'s selector attached.

    `base_model` itself is left unchanged. `isinstance(result, type(base_model))` holds. A learned selector
    starts from its initialisation (train it, or load trained weights into `result.token_selector`).
    """
    if config is None:
        config = TokenPruneConfig()
    if not isinstance(config, TokenPruneConfig):
        raise TypeError(f"`config` must be a TokenPruneConfig, got {type(config).__name__}")
    if isinstance(base_model, TokenPruningMixin):
        raise ValueError("`base_model` is already a pruned model; pass its stock base model instead")
    pruned_cls = next((pruned for stock, pruned in PRUNED_CLASSES.items() if isinstance(base_model, stock)), None)
    if pruned_cls is None:
        supported = ", ".join(stock.__name__ for stock in PRUNED_CLASSES)
        raise ValueError(f"`base_model` of type {type(base_model).__name__} is not supported; supported: {supported}")
    # Validate before building anything, so a bad config leaves no half-made model behind.
    pruned = pruned_cls.from_base_model(base_model)
    pruned.attach_token_selector(config)
    return pruned
