"""`TokenPruneTrainingArguments`: `TrainingArguments` plus the hyperparameters of the training recipes.

The built-in recipes' argument dataclasses (`training/methods/<method>.py`) are mixins of
`TokenPruneTrainingArguments`, so their flags (`--lambda_start`, `--tau_start`, `--reg_p`, ...) parse as before;
`training_arguments_class()` adds the argument dataclasses of recipes registered later (third parties).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..modeling.configuration_token_prune import check_budget
from ..modeling.pruning import check_budget_scope
from .methods import (
    AutoSelectArguments,
    QuestionSelectorArguments,
    ReconstructionArguments,
    VisionSelectorArguments,
)
from .recipe import RecipeArguments, get_recipe, registered_recipes


@dataclass
class TokenPruneTrainingArguments(
    QuestionSelectorArguments,
    VisionSelectorArguments,
    AutoSelectArguments,
    ReconstructionArguments,
    RecipeArguments,
    TrainingArguments,
):
    """`TrainingArguments` with the built-in recipes' hyperparameters; defaults are the papers' (sources in each help).

    Fields added here (the recipes' own are documented in their argument classes):
        train_budget: fraction of each image's tokens the recipes' soft masks keep.
        train_budget_scope: "image" or "sample", the unit `train_budget` applies to.

    Defaults changed from `TrainingArguments`: `remove_unused_columns=False` (the collator needs the raw
    records) and `ddp_find_unused_parameters=True` (a batch without images leaves the scorer unused).
    """

    train_budget: float = field(
        default=0.2,
        metadata={
            "help": "visionselector / autoselect: fraction of each image's tokens the soft mask keeps (paper 000 Sec. 4.2: 0.2)."
        },
    )
    train_budget_scope: str = field(
        default="image",
        metadata={
            "help": "What train_budget applies to: 'image' (each image / frame) or 'sample' (all of a sample's images "
            "and frames together, paper 000's k = b * N); use the same prune_budget_scope at inference."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads the raw conversation records."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=True, metadata={"help": "Kept True: a batch without images leaves the scorer out of the graph."}
    )

    def __post_init__(self) -> None:
        # Every recipe field is checked (each mixin's `__post_init__`) before `TrainingArguments` touches devices.
        check_budget(self.train_budget, "train_budget", allow_auto=False)
        check_budget_scope(self.train_budget_scope, "train_budget_scope")
        super().__post_init__()


def training_arguments_class() -> type[TokenPruneTrainingArguments]:
    """`TokenPruneTrainingArguments`, extended with the argument dataclasses of every recipe registered since.

    `hf-tokenprune train` parses with this class, so a recipe registered before parsing brings its own flags.
    """
    extra = []
    for name in registered_recipes():
        arguments_cls = get_recipe(name).arguments_cls
        if not issubclass(TokenPruneTrainingArguments, arguments_cls) and arguments_cls not in extra:
            extra.append(arguments_cls)
    if not extra:
        return TokenPruneTrainingArguments
    return dataclasses.make_dataclass(
        TokenPruneTrainingArguments.__name__, [], bases=(*extra, TokenPruneTrainingArguments)
    )


__all__ = ["RecipeArguments", "TokenPruneTrainingArguments", "training_arguments_class"]
