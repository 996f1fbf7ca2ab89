"""hf-tokenprune: learned visual-token pruning for Hugging Face vision-language models.

Inference names load with the package; the training names (`TokenPruneTrainer`, ...) load on first use, so
`import hf_tokenprune` does not import the `Trainer` stack.
"""

from typing import TYPE_CHECKING

from . import hub  # its write_model_card is the card writer of `save_pretrained(model_card_writer="auto")`
from .hub import push_folder, render_model_card, write_model_card
from .model import PRUNED_CLASSES, get_pruned_model
from .modeling.architectures import get_pruned_class, pruned_classes, register_pruned_class
from .modeling.builtin_architectures import (
    PrunedGemma3ForConditionalGeneration,
    PrunedIdefics3ForConditionalGeneration,
    PrunedInternVLForConditionalGeneration,
    PrunedLlavaForConditionalGeneration,
    PrunedLlavaNextForConditionalGeneration,
    PrunedLlavaOnevisionForConditionalGeneration,
    PrunedQwen2_5_VLForConditionalGeneration,
    PrunedQwen3VLForConditionalGeneration,
    PrunedSmolVLMForConditionalGeneration,
)
from .modeling.configuration_token_prune import AutoBudget, TokenPruneConfig
from .modeling.token_selectors import (
    TokenSelector,
    available_selectors,
    get_selector_class,
    learned_selectors,
    register_selector,
    training_free_selectors,
)

if TYPE_CHECKING:
    from .training import (
        TokenPruneDataCollator,
        TokenPruneTrainer,
        TokenPruneTrainingArguments,
        load_conversation_records,
    )

_TRAINING_NAMES = (
    "TokenPruneDataCollator",
    "TokenPruneTrainer",
    "TokenPruneTrainingArguments",
    "load_conversation_records",
)

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _TRAINING_NAMES:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AutoBudget",
    "PrunedGemma3ForConditionalGeneration",
    "PRUNED_CLASSES",
    "PrunedIdefics3ForConditionalGeneration",
    "PrunedInternVLForConditionalGeneration",
    "PrunedLlavaForConditionalGeneration",
    "PrunedLlavaNextForConditionalGeneration",
    "PrunedLlavaOnevisionForConditionalGeneration",
    "PrunedQwen2_5_VLForConditionalGeneration",
    "PrunedSmolVLMForConditionalGeneration",
    "PrunedQwen3VLForConditionalGeneration",
    "TokenPruneConfig",
    "TokenPruneDataCollator",
    "TokenPruneTrainer",
    "TokenPruneTrainingArguments",
    "TokenSelector",
    "__version__",
    "available_selectors",
    "get_pruned_class",
    "get_pruned_model",
    "get_selector_class",
    "hub",
    "learned_selectors",
    "load_conversation_records",
    "pruned_classes",
    "push_folder",
    "register_pruned_class",
    "register_selector",
    "render_model_card",
    "training_free_selectors",
    "write_model_card",
]
