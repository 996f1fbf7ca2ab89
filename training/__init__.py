"""Training of the learned selectors with the Hugging Face `Trainer`; inside the library this folder is `hf_tokenprune.training`."""

from .arguments import TokenPruneTrainingArguments, training_arguments_class
from .callbacks import Schedule, ScheduleCallback, cosine_schedule, linear_schedule
from .data import TokenPruneDataCollator, conversation_messages, load_conversation_records
from .recipe import Recipe, RecipeArguments, get_recipe, register_recipe, registered_recipes
from .trainer import TokenPruneTrainer
from .training_model import TokenPruneTrainingModel

__all__ = [
    "Recipe",
    "RecipeArguments",
    "Schedule",
    "ScheduleCallback",
    "TokenPruneDataCollator",
    "TokenPruneTrainer",
    "TokenPruneTrainingArguments",
    "TokenPruneTrainingModel",
    "conversation_messages",
    "cosine_schedule",
    "get_recipe",
    "linear_schedule",
    "load_conversation_records",
    "register_recipe",
    "registered_recipes",
    "training_arguments_class",
]
