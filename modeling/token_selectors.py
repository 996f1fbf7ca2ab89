"""The selector base class and the open, string-keyed method registry.

A selector ranks the visual tokens of one image (or one video frame) and returns the positions to
keep. Learned selectors are `nn.Module`s with weights (attached to the model as `token_selector`);
training-free ones have none. A method is one `selector_<name>.py`: its config class (a `TokenPruneConfig`
subclass with the method's own fields), its selector class (with its metadata: `trainable`,
`default_feature_source`, `papers`) and one `register_selector(name, config_cls, selector_cls)` line. Third
parties register theirs the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from .configuration_token_prune import FEATURE_SOURCES, METHOD_CONFIG_CLASSES, AutoBudget, TokenPruneConfig
from .selection_ops import (
    auto_keep_count,
    check_selection_inputs,
    hard_topk_indices,
    hard_topk_indices_padded,
    pad_segments,
    tokens_to_keep,
)


class RegisteredMethod(NamedTuple):
    """One registry entry: the method's config class and selector class."""

    config_cls: type[TokenPruneConfig]
    selector_cls: type[TokenSelector]


_SELECTORS: dict[str, RegisteredMethod] = {}


class TokenSelector(nn.Module):
    """Base class of every selector.

    Class attributes:
        trainable: whether the selector has learned weights (and so needs a checkpoint to be useful).
        default_feature_source: what it reads unless the config says otherwise (`projector_output` or
            `vision_features`).
        papers: titles of the papers the method comes from, cited on model cards (empty for a plain baseline).

    Subclasses implement `score` (learned and score-based methods) or override `select`. `select_segments` picks the
    tokens of every image / frame of a forward in one call: by default one `select` per segment; for a class that
    implements `score_padded`, one batched scorer call over the padded segments and a batched top-k; for a class that
    implements `select_batch` (training-free rules), that one call.
    """

    trainable: ClassVar[bool] = False
    #: whether selection reads the sample's prompt: then `select_segments` / `score_segments` take `prompt_embeds`,
    #: one (M_i, llm_hidden_size) tensor per segment (the input embeddings of its sample's attended text tokens).
    uses_prompt: ClassVar[bool] = False
    #: whether selection happens inside the language model (fastv): then the plan keeps every token, the selector's
    #: `check_layer(num_layers)` names the first decoder layer that sees only the kept ones, and the segments'
    #: features are the attention the last prompt token pays each token in the layer before it, (N_i, 1).
    in_llm: ClassVar[bool] = False
    default_feature_source: ClassVar[str] = "projector_output"
    papers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TokenPruneConfig, input_dim: int, llm_hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.input_dim = input_dim
        self.llm_hidden_size = llm_hidden_size

    @property
    def feature_source(self) -> str:
        return self.config.feature_source or self.default_feature_source

    def resolved_config(self, config: TokenPruneConfig) -> TokenPruneConfig:
        """`config` with every size left to a default filled in as built (what a saved adapter records)."""
        return config

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> scores: (N,), higher means keep."""
        raise NotImplementedError(f"{type(self).__name__} does not define `score`")

    def select(
        self,
        features: torch.Tensor,
        num_keep: int,
        grid_hw: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Pick `num_keep` of the N tokens of one image.

        features: (N, input_dim); grid_hw: the (rows, cols) layout of the N tokens when they form a grid.
        Returns keep_indices: (num_keep,) int64, ascending (original order preserved).
        """
        return hard_topk_indices(self.score(features), num_keep)

    def score_padded(self, features: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Batched `score`: features (S, N, input_dim) of S segments padded to N, token_mask (S, N) True at real tokens
        -> scores (S, N); values at padding are ignored. Optional: a selector that implements it is scored in one call
        per forward by `select_segments`."""
        raise NotImplementedError(f"{type(self).__name__} does not define `score_padded`")

    def select_batch(
        self,
        features: list[torch.Tensor],
        num_keep: list[int],
        grid_hw: list[tuple[int, int] | None],
        generator: torch.Generator | None,
    ) -> list[torch.Tensor]:
        """Batched `select` of a training-free rule: S checked segments (N_i, input_dim), their budgets and layouts ->
        S keep_indices, equal to one `select` per segment. Optional: a selector that implements it is selected in one
        call per forward by `select_segments`."""
        raise NotImplementedError(f"{type(self).__name__} does not define `select_batch`")

    def select_segments(
        self,
        features: list[torch.Tensor],
        num_keep: list[int],
        grid_hw: list[tuple[int, int] | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """Pick `num_keep[i]` of the N_i tokens of segment i, for every segment (image or frame) at once.

        features: S tensors (N_i, input_dim); grid_hw: S layouts (or None). Returns S keep_indices (num_keep[i],) int64
        ascending, equal to calling `select` on each segment alone. One `select_batch` call, or one batched scorer call
        when the class implements `score_padded`, unless a subclass below the implementing class redefines `score` /
        `select` (see `redefines_per_segment_methods`); else one `select` per segment.
        """
        grid_hw = self.check_segment_lists(features, num_keep, grid_hw)
        if features:
            owner = self.batched_method_owner("select_batch")
            if owner is not None and not self.redefines_per_segment_methods(owner):
                for segment, keep in zip(features, num_keep, strict=True):
                    check_selection_inputs(segment, keep)
                return self.select_batch(features, num_keep, grid_hw, generator)
            owner = self.batched_method_owner("score_padded")
            if owner is not None and not self.redefines_per_segment_methods(owner):
                padded, token_mask = pad_segments(features)
                return hard_topk_indices_padded(self.score_padded(padded, token_mask), token_mask, num_keep)
        return [
            self.select(segment, keep, grid_hw=grid, generator=generator)
            for segment, keep, grid in zip(features, num_keep, grid_hw, strict=True)
        ]

    @classmethod
    def produces_scores(cls) -> bool:
        """Whether the method ranks tokens by a `score` (what `prune_budget="auto"` reads); rules that pick tokens
        another way (`select` / `select_batch` only) do not."""
        return any("score" in vars(klass) for klass in cls.__mro__ if klass is not TokenSelector)

    def score_segments(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Scores of every segment: S tensors (N_i, input_dim) -> S tensors (N_i,). One batched `score_padded` call
        where the class implements it (and no subclass below redefines `score`), else one `score` per segment."""
        for segment in features:
            check_selection_inputs(segment, 1)
        owner = self.batched_method_owner("score_padded")
        if features and owner is not None and not self.redefines_per_segment_methods(owner):
            padded, token_mask = pad_segments(features)
            scores = self.score_padded(padded, token_mask)
            return [row[:length] for row, length in zip(scores, token_mask.sum(-1).tolist(), strict=True)]
        return [self.score(segment) for segment in features]

    def select_segments_auto(
        self, features: list[torch.Tensor], budget: AutoBudget, **score_inputs: Any
    ) -> list[torch.Tensor]:
        """`prune_budget="auto"`: each segment keeps the `auto_keep_count` of its scores under `budget`, chosen by
        hard top-k on those scores. features: S tensors (N_i, input_dim) -> S keep_indices, ascending.
        `score_inputs` go to `score_segments` (`prompt_embeds` for a selector that `uses_prompt`)."""
        if not self.produces_scores():
            raise ValueError(f"{type(self).__name__} does not score tokens, so it cannot choose an 'auto' budget")
        kept = []
        for scores in self.score_segments(features, **score_inputs):
            num_tokens = scores.shape[0]
            count = auto_keep_count(
                scores,
                budget.threshold,
                tokens_to_keep(float(budget.min_fraction), num_tokens),
                tokens_to_keep(float(budget.max_fraction), num_tokens),
            )
            kept.append(hard_topk_indices(scores, count))
        return kept

    @staticmethod
    def check_segment_lists(
        features: list[torch.Tensor], num_keep: list[int], grid_hw: list[tuple[int, int] | None] | None
    ) -> list[tuple[int, int] | None]:
        """Raise unless the three lists of `select_segments` have one entry per segment; returns `grid_hw` as a list."""
        if len(features) != len(num_keep) or (grid_hw is not None and len(grid_hw) != len(features)):
            raise ValueError(
                f"`features`, `num_keep` and `grid_hw` must have one entry per segment, got {len(features)}, "
                f"{len(num_keep)} and {None if grid_hw is None else len(grid_hw)}"
            )
        return list(grid_hw) if grid_hw is not None else [None] * len(features)

    def batched_method_owner(self, name: str) -> type | None:
        """The class below `TokenSelector` that defines the batched method `name`, or None when only the base does."""
        return next((klass for klass in type(self).__mro__ if name in vars(klass) and klass is not TokenSelector), None)

    def redefines_per_segment_methods(self, owner: type) -> bool:
        """Whether `score` / `select` are redefined below `owner` (or on the instance), so that `owner`'s batched path
        would bypass them: a third-party subclass that changes only the per-segment methods keeps its behaviour."""
        if "score" in self.__dict__ or "select" in self.__dict__:
            return True
        for klass in type(self).__mro__:
            if klass is owner:
                return False
            if "score" in vars(klass) or "select" in vars(klass):
                return True
        return False


def register_selector(
    name: str,
    config_cls: type[TokenPruneConfig],
    selector_cls: type[TokenSelector],
    *,
    overwrite: bool = False,
) -> None:
    """Register a method: `prune_method=name` and `TokenPruneConfig(method=name)` then find it.

    config_cls: a `TokenPruneConfig` dataclass subclass holding the method's own fields (it may add none).
    selector_cls: the `TokenSelector` subclass built from that config.
    Raises ValueError on a name already registered unless `overwrite=True`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"selector `name` must be a non-empty string, got {name!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, TokenPruneConfig)):
        raise TypeError(f"`config_cls` must be a TokenPruneConfig subclass, got {config_cls!r}")
    if not (isinstance(selector_cls, type) and issubclass(selector_cls, TokenSelector)):
        raise TypeError(f"`selector_cls` must be a TokenSelector subclass, got {selector_cls!r}")
    if selector_cls.default_feature_source not in FEATURE_SOURCES:
        raise ValueError(
            f"{selector_cls.__name__}.default_feature_source must be one of {FEATURE_SOURCES}, "
            f"got {selector_cls.default_feature_source!r}"
        )
    if name in _SELECTORS and not overwrite:
        raise ValueError(
            f"a selector named {name!r} is already registered ({_SELECTORS[name].selector_cls.__name__}); "
            "pass overwrite=True to replace it"
        )
    _SELECTORS[name] = RegisteredMethod(config_cls, selector_cls)
    METHOD_CONFIG_CLASSES[name] = config_cls


def get_selector_class(name: str, argument: str = "prune_method") -> type[TokenSelector]:
    if not isinstance(name, str):
        raise TypeError(f"`{argument}` must be a string naming a selector, got {type(name).__name__}")
    if name not in _SELECTORS:
        raise ValueError(f"unknown `{argument}` {name!r}; registered selectors: {sorted(_SELECTORS)}")
    return _SELECTORS[name].selector_cls


def registered_config_class(name: object) -> type[TokenPruneConfig] | None:
    """The config class registered for `name`, or None when no method has that name."""
    entry = _SELECTORS.get(name) if isinstance(name, str) else None
    return entry.config_cls if entry is not None else None


def available_selectors() -> list[str]:
    return sorted(_SELECTORS)


def learned_selectors() -> list[str]:
    """Registered methods with trained weights (`trainable`), sorted: the one list of learned methods."""
    return sorted(name for name, entry in _SELECTORS.items() if entry.selector_cls.trainable)


def training_free_selectors() -> list[str]:
    """Registered methods without weights, sorted."""
    return sorted(name for name, entry in _SELECTORS.items() if not entry.selector_cls.trainable)
