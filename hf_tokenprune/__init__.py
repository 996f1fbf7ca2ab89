"""hf-tokenprune: learned visual-token pruning for Hugging Face vision-language models."""

from . import hub  # registers the model-card writer of save_pretrained
from .hub import push_folder, render_model_card, write_model_card
from .model import PRUNED_CLASSES, get_pruned_model
from .modeling.configuration_token_prune import TokenPruneConfig
from .modeling.modeling_pruned_internvl import PrunedInternVLForConditionalGeneration
from .modeling.modeling_pruned_llava import PrunedLlavaForConditionalGeneration
from .modeling.modeling_pruned_llava_next import PrunedLlavaNextForConditionalGeneration
from .modeling.modeling_pruned_qwen2_5_vl import PrunedQwen2_5_VLForConditionalGeneration
from .modeling.token_selectors import TokenSelector, available_selectors, get_selector_class, register_selector
from .training import (
    TokenPruneDataCollator,
    TokenPruneTrainer,
    TokenPruneTrainingArguments,
    load_conversation_records,
)

__version__ = "0.1.0"

__all__ = [
    "PRUNED_CLASSES",
    "PrunedInternVLForConditionalGeneration",
    "PrunedLlavaForConditionalGeneration",
    "PrunedLlavaNextForConditionalGeneration",
    "PrunedQwen2_5_VLForConditionalGeneration",
    "TokenPruneConfig",
    "TokenPruneDataCollator",
    "TokenPruneTrainer",
    "TokenPruneTrainingArguments",
    "TokenSelector",
    "__version__",
    "available_selectors",
    "get_pruned_model",
    "get_selector_class",
    "hub",
    "load_conversation_records",
    "push_folder",
    "register_selector",
    "render_model_card",
    "write_model_card",
]
