"""Training of the learned selectors with the Hugging Face `Trainer`; inside the library this folder is `hf_tokenprune.training`."""

from .arguments import TokenPruneTrainingArguments
from .callbacks import ScheduleCallback, cosine_schedule, linear_schedule
from .data import TokenPruneDataCollator, conversation_messages, load_conversation_records
from .recipes import RECIPES, TokenPruneTrainingModel
from .trainer import TokenPruneTrainer

__all__ = [
    "RECIPES",
    "ScheduleCallback",
    "TokenPruneDataCollator",
    "TokenPruneTrainer",
    "TokenPruneTrainingArguments",
    "TokenPruneTrainingModel",
    "conversation_messages",
    "cosine_schedule",
    "linear_schedule",
    "load_conversation_records",
]
