"""The built-in training recipes, one module per learned method; importing this package registers them.

Each module holds the method's argument dataclass (a `RecipeArguments` mixin), its `Recipe` (loss, train-only
modules, schedules) and one `register_recipe` line. Third-party methods register the same way from their own package.
"""

from __future__ import annotations

from .autoselect import AutoSelectArguments, AutoSelectRecipe
from .questionselector import QuestionSelectorArguments, QuestionSelectorRecipe
from .reconstruction import ReconstructionArguments, ReconstructionRecipe
from .visionselector import VisionSelectorArguments, VisionSelectorRecipe

__all__ = [
    "AutoSelectArguments",
    "AutoSelectRecipe",
    "QuestionSelectorArguments",
    "QuestionSelectorRecipe",
    "ReconstructionArguments",
    "ReconstructionRecipe",
    "VisionSelectorArguments",
    "VisionSelectorRecipe",
]
