"""`questionselector`: a question-aware learned scorer (this project's; paper 001 B.4 sketches conditioning on the text).

The three papers' scorers never see the question: they keep what is salient in the image, whatever is asked. This one
scores each visual token with a light cross-attention to the prompt's token embeddings (the language model's input
embeddings of the text tokens, no LLM pass), so what it keeps follows the question. Paper 001 (B.4) conditions its
selector on a middle LLM layer instead, which needs part of a forward over the full sequence; this keeps selection
before the LLM, as the other methods do.

The trade-off: selection depends on the prompt. A follow-up turn of a chat about the same image is pruned again from
the images with the new prompt (a pruned `generate` never continues from a pruned cache, see README), and a tokens
kept for one question may lack what the next needs.

Holds the method's config (`QuestionSelectorConfig`), its scorer and its registration; its training recipe (the
`visionselector` one: Differentiable Top-K, BCE constraint) is `hf_tokenprune/training/methods/questionselector.py`.

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .configuration_token_prune import TokenPruneConfig, check_float, check_int
from .selection_ops import check_selection_inputs, hard_topk_indices_padded, pad_segments
from .token_selectors import TokenSelector, register_selector


@dataclass
class QuestionSelectorConfig(TokenPruneConfig):
    """`TokenPruneConfig` of `questionselector`.

    Fields (besides the shared ones):
        scorer_hidden_size: projection width d; `None` = a quarter of the LLM width (see `QuestionSelectorScorer`).
        scorer_init_std: std of the near-zero init of the projections.
    """

    method: str = field(default="questionselector", metadata={"help": "Registered selector name."})
    scorer_hidden_size: int | None = field(
        default=None, metadata={"help": "Projection width d (>= 1); None = a quarter of the LLM width."}
    )
    scorer_init_std: float = field(default=1e-3, metadata={"help": "Std of the near-zero init of the projections."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.scorer_hidden_size, "scorer_hidden_size", 1, optional=True)
        check_float(self.scorer_init_std, "scorer_init_std")


class QuestionSelectorScorer(TokenSelector):
    """Scores visual token i of an image against the image and the prompt:

        q_i = W_q v_i,  k = W_k mean_j(v_j),  t_m = W_t e_m  (e_m: the prompt's M token embeddings)
        c_i = sum_m softmax_m(q_i . t_m / sqrt(d)) t_m
        s_i = q_i . (k + c_i) / sqrt(d)

    The first term is `visionselector`'s (paper 000, Eq. 2, mean over keys taken first): what the image makes
    salient. The second is one head of cross-attention from the visual tokens to the prompt: q_i . c_i is a
    softmax-weighted mean of token i's similarity to each prompt token, close to its best match, so a token that
    matches a word of the question scores high. Computed with the query projection folded into the keys (see
    `score_padded`): O(N D (1 + M)) for M prompt tokens, or O(N D d + N M d) where the prompt is longer than d.

    The prompt is every attended text token of the sample (chat template included): the template is the same for
    every question, so training learns to look past it. Projections have no bias and start near zero, so training
    starts from almost uniform scores, as visionselector's does.

    Width: d defaults to a quarter of the LLM width (visionselector's paper uses half). At half, its cost on one CPU
    thread at LLaVA-NeXT-7B widths (2,928 tokens, 4,096 wide) was 0.62% of time to first token, over the project's
    0.5% selection budget; it is the N x D x d query projection, which a quarter halves. The bundled testbed adapter
    was trained at half (its config says 64).

    Attributes:
        query_proj: W_q, `input_dim -> d`.
        key_proj: W_k, `input_dim -> d`.
        text_proj: W_t, `llm_hidden_size -> d` (the prompt embeddings are the LLM's input embeddings).
    """

    trainable = True
    uses_prompt = True
    default_feature_source = "projector_output"

    def __init__(self, config: QuestionSelectorConfig, input_dim: int, llm_hidden_size: int) -> None:
        super().__init__(config, input_dim, llm_hidden_size)
        projection_dim = config.scorer_hidden_size or max(llm_hidden_size // 4, 1)
        self.projection_dim = projection_dim
        self.query_proj = nn.Linear(input_dim, projection_dim, bias=False)
        self.key_proj = nn.Linear(input_dim, projection_dim, bias=False)
        self.text_proj = nn.Linear(llm_hidden_size, projection_dim, bias=False)
        for projection in (self.query_proj, self.key_proj, self.text_proj):
            nn.init.normal_(projection.weight, mean=0.0, std=config.scorer_init_std)

    def resolved_config(self, config: QuestionSelectorConfig) -> QuestionSelectorConfig:
        return dataclasses.replace(config, scorer_hidden_size=self.projection_dim)

    def score(self, features: torch.Tensor, prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """features: (N, input_dim), prompt_embeds: (M, llm_hidden_size) -> scores: (N,)."""
        if features.ndim != 2:
            raise ValueError(f"`features` must be (N, input_dim) for one image, got shape {tuple(features.shape)}")
        prompt = self._check_prompt([features], None if prompt_embeds is None else [prompt_embeds])[0]
        token_mask = torch.ones(1, features.shape[0], dtype=torch.bool, device=features.device)
        prompt_mask = torch.ones(1, prompt.shape[0], dtype=torch.bool, device=features.device)
        return self.score_padded(features[None], token_mask, prompt[None], prompt_mask)[0]

    def score_padded(
        self,
        features: torch.Tensor,
        token_mask: torch.Tensor,
        prompt_embeds: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """features (S, N, input_dim), token_mask (S, N); prompt_embeds (S, M, llm_hidden_size), prompt_mask (S, M)
        True at real prompt tokens -> scores (S, N). Padding of either side changes no real token's score."""
        if prompt_embeds is None or prompt_mask is None:
            raise ValueError(
                "`questionselector` scores tokens against the prompt: pass `prompt_embeds` and `prompt_mask`"
            )
        dtype = self.query_proj.weight.dtype
        features, prompt_embeds = features.to(dtype), prompt_embeds.to(dtype)
        mask = token_mask[..., None].to(dtype)
        mean_key = self.key_proj((features * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1))
        text_keys = self.text_proj(prompt_embeds)
        scale = math.sqrt(self.projection_dim)
        # Every score is q_i . x for a d-vector x per segment (the mean key, each prompt key): with q_i = W_q v_i,
        # q_i . x = v_i . (W_q^T x). With fewer such vectors (1 + M) than d, folding them into W_q costs
        # O(N D (1 + M)) instead of projecting every query, O(N D d); the scores are the same.
        if 1 + text_keys.shape[1] < self.projection_dim:
            directions = torch.cat([mean_key[:, None, :], text_keys], dim=1) @ self.query_proj.weight  # (S, 1+M, D)
            products = features @ directions.transpose(1, 2)  # (S, N, 1 + M): q_i . mean key, q_i . each prompt key
            mean_term, text_products = products[..., 0], products[..., 1:]
        else:
            queries = self.query_proj(features)
            mean_term = (queries @ mean_key[..., None]).squeeze(-1)
            text_products = queries @ text_keys.transpose(1, 2)
        logits = (text_products / scale).masked_fill(~prompt_mask[:, None, :], -math.inf)
        # A sample without any text token gets no context (all -inf would give NaN).
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        # q_i . context_i = sum_m w_im (q_i . t_m): the context vectors themselves are never needed.
        return (mean_term + (weights * text_products).sum(-1)) / scale

    def select(self, features, num_keep, grid_hw=None, generator=None) -> torch.Tensor:
        raise ValueError(
            "`questionselector` needs the prompt: select through `select_segments(..., prompt_embeds=...)` (what a "
            "pruned model's forward and generate do)"
        )

    def score_segments(
        self, features: list[torch.Tensor], prompt_embeds: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Scores of S segments (N_i, input_dim) against their prompts (M_i, llm_hidden_size), in one batched call."""
        if not features:
            self._check_prompt(features, prompt_embeds)
            return []
        scores, token_mask = self._padded_scores(features, prompt_embeds)
        return [row[:length] for row, length in zip(scores, token_mask.sum(-1).tolist(), strict=True)]

    def select_segments(
        self,
        features: list[torch.Tensor],
        num_keep: list[int],
        grid_hw: list[tuple[int, int] | None] | None = None,
        generator: torch.Generator | None = None,
        prompt_embeds: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """`TokenSelector.select_segments` with each segment's prompt: one batched scorer call, then hard top-k."""
        self.check_segment_lists(features, num_keep, grid_hw)
        for segment, keep in zip(features, num_keep, strict=True):
            check_selection_inputs(segment, keep)
        if not features:
            self._check_prompt(features, prompt_embeds)
            return []
        scores, token_mask = self._padded_scores(features, prompt_embeds)
        return hard_topk_indices_padded(scores, token_mask, num_keep)

    def _padded_scores(
        self, features: list[torch.Tensor], prompt_embeds: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (S, N), token_mask (S, N)) of S non-empty-list segments against their checked, padded prompts."""
        prompts = self._check_prompt(features, prompt_embeds)
        padded, token_mask = pad_segments(features)
        padded_prompt, prompt_mask = self._pad_prompts(prompts, padded.device)
        return self.score_padded(padded, token_mask, padded_prompt, prompt_mask), token_mask

    def _check_prompt(
        self, features: list[torch.Tensor], prompt_embeds: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        if prompt_embeds is None:
            raise ValueError("`questionselector` scores tokens against the prompt: pass `prompt_embeds`")
        if len(prompt_embeds) != len(features):
            raise ValueError(
                f"`prompt_embeds` must hold one (M, D) prompt per segment, got {len(prompt_embeds)} for "
                f"{len(features)} segments"
            )
        for prompt in prompt_embeds:
            if prompt.ndim != 2 or prompt.shape[-1] != self.llm_hidden_size:
                raise ValueError(
                    f"`prompt_embeds` must be (M, {self.llm_hidden_size}) per segment, got shape {tuple(prompt.shape)}"
                )
        return list(prompt_embeds)

    def _pad_prompts(self, prompts: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if all(prompt.shape[0] == 0 for prompt in prompts):  # pad_sequence needs one non-empty row for the width
            empty = torch.zeros(len(prompts), 1, self.llm_hidden_size, device=device)
            return empty, torch.zeros(len(prompts), 1, dtype=torch.bool, device=device)
        padded, mask = pad_segments(prompts)
        return padded.to(device), mask.to(device)


register_selector("questionselector", QuestionSelectorConfig, QuestionSelectorScorer)
