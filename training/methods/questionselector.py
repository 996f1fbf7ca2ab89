"""How `questionselector` trains: `visionselector`'s recipe (paper 000 Sec. 3.3-3.4: Differentiable Top-K soft mask,
BCE constraint annealed from `lambda_start` to `lambda_end`) on scores that also read the sample's prompt.

The recipe gets each image's prompt embeddings from `Recipe.language_forward` (the selector `uses_prompt`), so a
record's question is what the scorer conditions on, as at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..recipe import register_recipe
from .visionselector import VisionSelectorArguments, VisionSelectorRecipe


@dataclass
class QuestionSelectorArguments(VisionSelectorArguments):
    """Arguments of the `questionselector` recipe: those of `visionselector` (same loss and schedule)."""


class QuestionSelectorRecipe(VisionSelectorRecipe):
    """`VisionSelectorRecipe` whose scores come from the question-aware scorer."""

    def segment_embeds(self, model, segment, num_keep, metrics, prompt_embeds=None):
        embeds = segment.embeds
        if num_keep >= embeds.shape[0]:
            return embeds, embeds.new_zeros(())
        selector = model.token_selector
        dtype = next(selector.parameters()).dtype
        return self.soft_mask(embeds, selector.score(embeds.to(dtype), prompt_embeds.to(dtype)), num_keep, metrics)


register_recipe("questionselector", QuestionSelectorArguments, QuestionSelectorRecipe)
