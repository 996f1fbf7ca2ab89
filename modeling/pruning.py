"""Architecture-agnostic pruning: budgets, batched per-image selection, sequence compaction, and the model mixin.

The mixin `TokenPruningMixin` sits in front of a stock `transformers` VLM class. With a budget, it
encodes the images once, lets a selector pick the visual tokens of every image, and hands the language
model a shorter sequence (kept tokens only, at their original positions) as `inputs_embeds`. Without a
budget it calls the stock code unchanged. What differs between architectures (where visual tokens come
from, how positions are computed) lives in a small `ArchitectureHooks` object per architecture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.generation.streamers import BaseStreamer
from transformers.utils import ModelOutput, logging

from .builtin_selectors import VisionSelectorScorer  # noqa: F401  (importing the module registers every built-in)
from .configuration_token_prune import AutoBudget, TokenPruneConfig, check_budget
from .llm_pruning import InLLMTokenDrop
from .selection_ops import left_padded_compaction, scatter_compacted, tokens_to_keep
from .token_selectors import TokenSelector, available_selectors, get_selector_class

logger = logging.get_logger(__name__)


@dataclass
class VisualSegment:
    """One unit of selection: the visual tokens of one image, or of one video frame.

    embeds: (N, llm_hidden) projector output, what the language model would see.
    features: (N, vision_feature_dim) pre-projector features grouped per LLM token, or None if not requested.
    token_id: the placeholder id of these tokens in `input_ids`.
    grid_hw: (rows, cols) layout of the N tokens when they form a grid, else None.
    side_inputs: (N, D) what the language model reads at these tokens besides `embeds` (e.g. Qwen3-VL's DeepStack
        features), or None; kept and dropped with the tokens, fed by `ArchitectureHooks.feed_side_inputs`.
    """

    embeds: torch.Tensor
    features: torch.Tensor | None
    token_id: int
    grid_hw: tuple[int, int] | None = None
    side_inputs: torch.Tensor | None = None


class ArchitectureHooks:
    """What one architecture must tell the shared pruning code. One subclass per architecture file."""

    #: keyword inputs that feed only the vision side; dropped once the visual tokens are embedded.
    vision_input_names: tuple[str, ...] = ("pixel_values",)
    #: language-model inputs laid out like `input_ids` (B, L) that the stock code reads per token (e.g. Gemma 3's
    #: `token_type_ids`, which mark bidirectional image blocks): compacted with the kept positions, 0 at padding.
    per_token_input_names: tuple[str, ...] = ()

    def visual_token_ids(self, model) -> tuple[int, ...]:
        raise NotImplementedError

    def vision_feature_dim(self, config) -> int:
        """Width of the pre-projector features grouped per LLM token, from the model's config alone."""
        raise NotImplementedError

    def has_visual_inputs(self, inputs: dict[str, Any]) -> bool:
        return any(inputs.get(name) is not None for name in self.vision_input_names if name.startswith("pixel_values"))

    def encode(
        self, model, input_ids: torch.Tensor, inputs: dict[str, Any], need_features: bool
    ) -> list[VisualSegment]:
        """Run the vision side once. Segments are ordered per token id as their placeholders appear (row-major)."""
        raise NotImplementedError

    def project_features(self, model, features: torch.Tensor) -> torch.Tensor:
        """Run the stock projector on (N, vision_feature_dim) pre-projector features -> (N, llm_hidden).

        Training only: selectors that read `vision_features` are trained on features altered before the
        projector (paper 004 places the selector between encoder and projector).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot re-run its projector on altered vision features")

    def project_segment_features(self, model, segment: VisualSegment, features: torch.Tensor) -> torch.Tensor:
        """Training only: `segment`'s (N, llm_hidden) tokens from its altered (N, vision_feature_dim) `features`.

        `project_features` by default; an architecture whose stock code resamples tokens after the projector
        (LLaVA-OneVision) can read the unaltered `segment` to stay exact where nothing was altered.
        """
        return self.project_features(model, features)

    def token_pixel_dim(self, model) -> int:
        """Width of each row of `token_pixels`."""
        return self.token_pixels(model, {})  # raises the architecture's NotImplementedError

    def token_pixels(self, model, inputs: dict[str, Any]) -> list[torch.Tensor]:
        """Training only: the pixels under each LLM visual token, one (N, token_pixel_dim) tensor per segment.

        The target of the optional image reconstructor of the `reconstruction` recipe (paper 001, Eq. 6).
        """
        raise NotImplementedError(
            f"{type(self).__name__}: `image_reconstruction` needs the pixels under each visual token, which this "
            "architecture does not provide; train with image_reconstruction=False"
        )

    def position_ids(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, inputs: dict[str, Any]):
        """Positions of the unpruned sequence: (B, L), or (3, B, L) for M-RoPE. Padding-aware, as `generate` makes them."""
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.masked_fill(attention_mask == 0, 0)

    def attention_allowed(self, model, padding_mask: torch.Tensor, language_inputs: dict[str, Any]):
        """The keys each query may attend to in the stock model: (B, L, L) bool, causal and padding by default, or
        {layer type: (B, L, L)} where layer types differ. padding_mask: (B, L).

        Training only: the recipes' key-weighted 4-D mask (`soft_mask_mode="attention_bias"`) is built on it, and a
        4-D mask replaces the stock one, so it must say everything the stock mask would.
        """
        length = padding_mask.shape[-1]
        causal = torch.ones(length, length, dtype=torch.bool, device=padding_mask.device).tril()
        return causal[None] & padding_mask.bool()[:, None, :]

    def after_generate_plan(self, model, plan: PrunePlan) -> None:
        """Hook for per-architecture state that must follow the compacted sequence (e.g. cached rope deltas)."""

    def feed_side_inputs(
        self, model, visual_mask: torch.Tensor, side_inputs: torch.Tensor
    ) -> contextlib.AbstractContextManager:
        """A context in which the stock forward reads `side_inputs` (B, l, D) at the visual tokens `visual_mask` (B, l).

        For inputs the stock code derives from pixels only, so a forward on `inputs_embeds` would lack them (Qwen3-VL's
        DeepStack). Called only when the segments carry `side_inputs`; the default feeds nothing.
        """
        return contextlib.nullcontext()


class CaptureProjectorInput:
    """Context manager: append a projector's input to its output along the last dim.

    Whatever the stock code does to the projector output afterwards (re-ordering rows, splitting per image)
    is then applied to the pre-projector features too, so they stay aligned with the LLM tokens without
    re-implementing any of that bookkeeping. `split` separates the two again.
    """

    def __init__(self, projector: torch.nn.Module, group: int | None, enabled: bool) -> None:
        self.projector, self.group, self.enabled, self.handle = projector, group, enabled, None
        self.output_dim: int | None = None

    def _hook(self, module, args, output):
        features = args[0]
        if self.group is not None:
            features = features.reshape(-1, self.group)
        self.output_dim = output.shape[-1]
        return torch.cat([output, features.to(output.dtype)], dim=-1)

    def __enter__(self):
        if self.enabled:
            self.handle = self.projector.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()

    def split(self, merged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.enabled:
            return merged, None
        return merged[..., : self.output_dim], merged[..., self.output_dim :]


@dataclass
class PrunePlan:
    """The compacted sequence handed to the language model.

    keep_mask: (B, L) caller layout; False only at dropped visual tokens.
    source_index: (B, Lc) position in the caller's row of each compacted slot (0 at padding slots).
    attention_mask: (B, Lc) compacted, left-padded.
    input_ids / inputs_embeds / position_ids: compacted; position_ids keep the unpruned positions.
    per_token_inputs: the architecture's `per_token_input_names` the caller gave, compacted (B, Lc).
    side_inputs: (B, Lc, D) the segments' `side_inputs` at the kept slots (zeros elsewhere), or None.
    With an `in_llm` selector (fastv) the plan keeps every token; `in_llm_units` says what the language model drops.
    """

    keep_mask: torch.Tensor
    source_index: torch.Tensor
    attention_mask: torch.Tensor
    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None = None
    shift_labels: torch.Tensor | None = None
    per_token_inputs: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    side_inputs: torch.Tensor | None = None
    #: for a selector that selects inside the language model (`in_llm`): the units to prune, as (segment, rows,
    #: cols, num_keep) in the caller's layout (num_keep None for an "auto" budget); nothing is dropped before it.
    in_llm_units: list | None = None

    def gather(self, values: torch.Tensor, fill: float | int) -> torch.Tensor:
        """Compact a (..., B, L) tensor laid out like the caller's input_ids; padding slots get `fill`."""
        index = self.source_index.expand(*values.shape[:-2], -1, -1)
        compact = values.gather(-1, index)
        return compact.masked_fill(self.attention_mask.expand_as(compact) == 0, fill)

    def scatter(self, compact: torch.Tensor, full_length: int, fill: float = 0.0) -> torch.Tensor:
        """Inverse of the compaction for (B, Lc, ...) tensors: back to (B, L, ...), `fill` where nothing was computed."""
        return scatter_compacted(compact, self.source_index, self.attention_mask.bool(), full_length, fill)


def budget_keeps_everything(budget: float | int | AutoBudget | None) -> bool:
    return budget is None or (isinstance(budget, float) and budget == 1.0)


def advertised_signature(stock_function, added: tuple[str, ...]) -> inspect.Signature:
    """`stock_function`'s signature plus keyword-only `added` parameters (default None) before its `**kwargs`.

    The stock `**kwargs: Unpack[TransformersKwargs]` annotation is kept: it is how transformers learns which outputs
    (e.g. `output_attentions`) the model supports.
    """
    parameters = list(inspect.signature(stock_function).parameters.values())
    var_keyword = [p for p in parameters if p.kind == p.VAR_KEYWORD]
    named = [p for p in parameters if p.kind != p.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in added]
    return inspect.Signature(named + extra + var_keyword)


#: Attribute a pruned `generate` sets on the cache it filled: the caller's (B, L) `keep_mask`.
PRUNED_CACHE_ATTRIBUTE = "token_prune_keep_mask"


def refuse_pruned_cache(cache) -> None:
    """Raise if `cache` was filled by a pruned `generate`: it holds the kept sequence, not the caller's."""
    if getattr(cache, PRUNED_CACHE_ATTRIBUTE, None) is not None:
        raise ValueError(
            "`past_key_values` was filled by a pruned `generate` and holds only the kept tokens, so it cannot continue "
            "the caller's sequence (whose dropped visual tokens it lacks). Call `generate` again on the whole sequence "
            "(with `prune_budget=` to prune its images again) instead of passing `past_key_values`"
        )


class CallerPromptStreamer(BaseStreamer):
    """Hands `streamer` the caller's prompt where the stock `generate` puts the kept one, then every new token."""

    def __init__(self, streamer: BaseStreamer, prompt: torch.Tensor) -> None:
        self.streamer, self.prompt = streamer, prompt

    def put(self, value: torch.Tensor) -> None:
        if self.prompt is not None:
            value, self.prompt = self.prompt.cpu(), None
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()


BUDGET_SCOPES = ("image", "sample")


def check_budget_scope(scope: Any, name: str = "prune_budget_scope") -> str:
    """The budget's unit: "image" (each image / frame, the default for None) or "sample" (all of a sample's together)."""
    if scope is None:
        return "image"
    if not isinstance(scope, str) or scope not in BUDGET_SCOPES:
        raise ValueError(f"`{name}` must be one of {BUDGET_SCOPES} or None, got {scope!r}")
    return scope


def selection_units(
    placed: list[tuple[VisualSegment, torch.Tensor, torch.Tensor]], scope: str
) -> list[tuple[VisualSegment, torch.Tensor, torch.Tensor]]:
    """The units a budget applies to: `placed` itself for scope "image"; for "sample", one merged segment per batch
    row holding all its images and frames (features concatenated in order, no grid), so k = b * N_sample."""
    if scope == "image":
        return placed
    units = []
    for row in sorted({int(rows[0]) for _, rows, _ in placed}):
        members = [item for item in placed if int(item[1][0]) == row]
        features = [segment.features for segment, _, _ in members]
        merged = VisualSegment(
            embeds=torch.cat([segment.embeds for segment, _, _ in members]),
            features=None if features[0] is None else torch.cat(features),
            token_id=members[0][0].token_id,
        )
        units.append((merged, torch.cat([rows for _, rows, _ in members]), torch.cat([cols for _, _, cols in members])))
    return units


def placed_side_inputs(
    placed: list[tuple[VisualSegment, torch.Tensor, torch.Tensor]], input_ids: torch.Tensor
) -> torch.Tensor | None:
    """The segments' `side_inputs` laid out like `input_ids` (B, L): (B, L, D), zeros elsewhere; None without any."""
    carried = [(segment.side_inputs, rows, cols) for segment, rows, cols in placed if segment.side_inputs is not None]
    if not carried:
        return None
    first = carried[0][0]
    full = first.new_zeros(*input_ids.shape, first.shape[-1])
    for values, rows, cols in carried:
        full[rows, cols] = values.to(full.dtype)
    return full


def drop_unselected(
    selector: TokenSelector,
    budget: float | int | AutoBudget,
    units: list[tuple[VisualSegment, torch.Tensor, torch.Tensor, int | None]],
    features: list[torch.Tensor],
    keep_mask: torch.Tensor,
    **score_inputs: Any,
) -> None:
    """Select in every unit at once (one `select_segments`, or `select_segments_auto` for an "auto" budget) and set
    `keep_mask` (B, L) False at each unit's tokens that were not selected.

    units: (segment, rows, cols, num_keep) with the unit's positions in `keep_mask`'s layout (num_keep None under
    "auto"); features: one (N_i, D) tensor per unit; `score_inputs` go to the selector (`prompt_embeds`).
    """
    with torch.no_grad():
        if isinstance(budget, AutoBudget):
            kept = selector.select_segments_auto(features, budget, **score_inputs)
        else:
            kept = selector.select_segments(
                features,
                [num_keep for *_, num_keep in units],
                grid_hw=[segment.grid_hw for segment, *_ in units],
                **score_inputs,
            )
    for (_, rows, cols, _), keep_indices in zip(units, kept, strict=True):
        dropped = torch.ones(rows.numel(), dtype=torch.bool, device=keep_mask.device)
        dropped[keep_indices.to(keep_mask.device)] = False
        keep_mask[rows[dropped], cols[dropped]] = False


def prompt_embeds_by_row(
    inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, visual_mask: torch.Tensor
) -> list[torch.Tensor]:
    """What a selector that `uses_prompt` reads: per row of (B, L, D) `inputs_embeds`, the (M_b, D) embeddings of
    its attended tokens that are not visual placeholders (the prompt's text, chat template included)."""
    text = attention_mask.bool() & ~visual_mask
    return [inputs_embeds[row, text[row]] for row in range(inputs_embeds.shape[0])]


#: Model input that `prepare_inputs_for_generation` adds for `forward`: (visual_mask, side_inputs) of the kept prompt.
SIDE_INPUTS_KEY = "token_prune_side_inputs"


class TokenPruningMixin:
    """Adds `prune_budget=` / `prune_method=` to `forward` and `generate` of a stock VLM class.

    Attributes set on the instance: `token_prune_config` (a `TokenPruneConfig` or None) and, for learned
    methods, the `token_selector` submodule.
    """

    prune_hooks: ArchitectureHooks

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.token_prune_config: TokenPruneConfig | None = None
        self.token_selector: TokenSelector | None = None
        self.token_prune_extra_files: dict[str, Any] = {}  # training_recipe.json / eval_results.json of its repo

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # `generate` inspects forward's signature (e.g. whether it takes `position_ids`), so the drop-in
        # forward must advertise the stock parameters plus ours.
        stock_forward = next(
            klass.__dict__["forward"]
            for klass in cls.__mro__[cls.__mro__.index(TokenPruningMixin) + 1 :]
            if "forward" in klass.__dict__
        )

        forward_signature = advertised_signature(stock_forward, ("prune_budget", "prune_method", "prune_budget_scope"))
        positional_names = [
            p.name for p in list(forward_signature.parameters.values())[1:] if p.kind == p.POSITIONAL_OR_KEYWORD
        ]

        def forward(self, *args, **kwargs):
            if len(args) > len(positional_names):
                raise TypeError(f"forward() takes at most {len(positional_names)} positional arguments")
            for name, value in zip(positional_names, args, strict=False):
                if name in kwargs:
                    raise TypeError(f"forward() got multiple values for argument '{name}'")
                kwargs[name] = value
            return TokenPruningMixin.forward(self, **kwargs)

        forward.__signature__ = forward_signature
        forward.__doc__ = TokenPruningMixin.forward.__doc__
        forward.__name__ = forward.__qualname__ = "forward"
        cls.forward = forward

        # Generation tests read this signature too (e.g. whether `inputs_embeds` is accepted).
        def prepare_inputs_for_generation(self, *args, **kwargs):
            return TokenPruningMixin.prepare_inputs_for_generation(self, *args, **kwargs)

        prepare_inputs_for_generation.__signature__ = advertised_signature(
            cls._stock_class().prepare_inputs_for_generation, ("kept_prompt_embeds", "kept_prompt_side_inputs")
        )
        prepare_inputs_for_generation.__doc__ = TokenPruningMixin.prepare_inputs_for_generation.__doc__
        prepare_inputs_for_generation.__name__ = prepare_inputs_for_generation.__qualname__ = (
            "prepare_inputs_for_generation"
        )
        cls.prepare_inputs_for_generation = prepare_inputs_for_generation

        # transformers renames checkpoint keys (e.g. LLaVA's `language_model.lm_head` -> `lm_head`) by class name or
        # model_type, but skips classes defined outside transformers unless their name was registered: ours must
        # read and write exactly the stock checkpoints.
        stock = cls._stock_class()
        mapping = get_checkpoint_conversion_mapping(stock.__name__) or get_checkpoint_conversion_mapping(
            stock.config_class.model_type
        )
        if mapping is not None:
            register_checkpoint_conversion_mapping(cls.__name__, mapping, overwrite=True)

    @classmethod
    def _stock_class(cls) -> type:
        """The `transformers` model class this pruned class extends."""
        return next(klass for klass in cls.__mro__[1:] if klass.__module__.startswith("transformers."))

    @classmethod
    def is_custom_code(cls) -> bool:
        """As the stock class: weights are initialised and checkpoint keys converted as the stock class does them.

        transformers treats every class defined outside its package as custom code (a different `_init_weights`
        path for missing weights); ours adds no weights of its own to a checkpoint, so it must not. Our module
        name stays true, so `save_pretrained` still copies the remote-code files and writes `auto_map`.
        """
        return cls._stock_class().is_custom_code()

    @classmethod
    def from_base_model(cls, base_model):
        """A `cls` instance sharing every module, parameter and buffer of `base_model`, which stays unchanged."""
        pruned = cls.__new__(cls)
        state = dict(base_model.__dict__)
        state.pop("forward", None)  # an instance-level forward (an accelerate hook) would bypass ours
        for key, value in state.items():
            if isinstance(value, dict):
                state[key] = type(value)(value)  # own registries (_modules, _parameters, hooks), shared tensors
        pruned.__dict__.update(state)
        pruned.token_prune_config = None
        pruned.token_selector = None
        pruned.token_prune_extra_files = {}
        return pruned

    # ----------------------------------------------------------------- attachment
    @classmethod
    def build_token_selector(
        cls, model_config, prune_config: TokenPruneConfig
    ) -> tuple[TokenPruneConfig, TokenSelector | None]:
        """Check `prune_config` against a model config (no weights needed) and build its freshly initialised selector.

        Returns the config completed with `input_dim` and `base_model_type`, and the selector (None for methods
        without parameters). Raises, naming the field, when the selector was made for another base model.
        """
        if not isinstance(prune_config, TokenPruneConfig):
            raise TypeError(f"`config` must be a TokenPruneConfig, got {type(prune_config).__name__}")
        model_type = model_config.model_type
        if prune_config.base_model_type is not None and prune_config.base_model_type != model_type:
            raise ValueError(
                f"`base_model_type` of the token-prune config is {prune_config.base_model_type!r} but this model is "
                f"{model_type!r}: the selector was trained for another base model"
            )
        selector_cls = get_selector_class(prune_config.method, argument="method")
        feature_source = prune_config.feature_source or selector_cls.default_feature_source
        input_dim = cls._selector_input_dim(model_config, feature_source)
        if prune_config.input_dim is not None and prune_config.input_dim != input_dim:
            raise ValueError(
                f"`input_dim` of the token-prune config is {prune_config.input_dim} but this model's {feature_source} "
                f"are {input_dim} wide: the selector does not match this model"
            )
        prune_config = dataclasses.replace(prune_config, input_dim=input_dim, base_model_type=model_type)
        llm_hidden_size = cls._llm_hidden_size(model_config)
        selector = selector_cls(prune_config, input_dim=input_dim, llm_hidden_size=llm_hidden_size)
        prune_config = selector.resolved_config(prune_config)
        return prune_config, (selector if any(True for _ in selector.parameters()) else None)

    def attach_token_selector(self, prune_config: TokenPruneConfig, selector: TokenSelector | None = None) -> None:
        """Validate `prune_config` against this model and attach its selector (weights freshly initialised).

        `selector`, when given, is a selector already built (and possibly loaded) for `prune_config`.
        """
        prune_config, built = self.build_token_selector(self.config, prune_config)
        selector = built if selector is None else selector
        if selector is not None:
            reference = next(self.parameters())
            selector = selector.to(device=reference.device, dtype=reference.dtype)
        self.token_selector = selector
        self.token_prune_config = prune_config
        self._transient_selectors: dict[str, TokenSelector] = {}

    @staticmethod
    def _llm_hidden_size(model_config) -> int:
        return model_config.get_text_config().hidden_size

    @classmethod
    def _selector_input_dim(cls, model_config, feature_source: str) -> int:
        if feature_source == "projector_output":
            return cls._llm_hidden_size(model_config)
        return cls.prune_hooks.vision_feature_dim(model_config)

    # ----------------------------------------------------------------- call-time resolution
    def resolve_pruning(
        self, prune_budget: Any, prune_method: Any
    ) -> tuple[float | int | AutoBudget | None, TokenSelector | None]:
        """Validate the call-time arguments (before any compute) and return (budget, selector).

        The selector is the one `forward` / `generate` would call for these arguments (attached or transient);
        (None, None) when the call keeps every token. An "auto" budget comes back as its `AutoBudget`.
        """
        budget = check_budget(prune_budget, "prune_budget")
        config = getattr(self, "token_prune_config", None)
        if budget is None and config is not None:  # the config's default (an "auto" one is stored as its string)
            budget = check_budget(config.budget, "budget")
        if prune_method is None:
            if config is None:
                if not budget_keeps_everything(budget):
                    raise ValueError(
                        "`prune_budget` was given but this model has no token selector: pass `prune_method=` "
                        "(e.g. 'divprune') or attach one with hf_tokenprune.get_pruned_model"
                    )
                return None, None
            prune_method = config.method
        selector_cls = get_selector_class(prune_method, argument="prune_method")
        if budget_keeps_everything(budget):
            return None, None
        if isinstance(budget, AutoBudget) and not selector_cls.produces_scores():
            raise ValueError(
                f"`prune_budget` {str(budget)!r} lets the selector choose each image's budget from its token scores, "
                f"but `prune_method` {prune_method!r} does not score tokens; use a method that does "
                f"({', '.join(name for name in available_selectors() if get_selector_class(name).produces_scores())})"
                " or a fixed budget"
            )
        if config is not None and prune_method == config.method and self.token_selector is not None:
            return budget, self.token_selector
        if selector_cls.trainable:
            attached = config.method if config is not None else None
            raise ValueError(
                f"`prune_method` {prune_method!r} is a learned selector and needs trained weights, but this model's "
                f"selector is {attached!r}; load a checkpoint of {prune_method!r} or use a training-free method"
            )
        cache = self.__dict__.setdefault("_transient_selectors", {})
        if prune_method not in cache:
            base = config if config is not None else TokenPruneConfig(method=prune_method)
            transient_config = base.with_method(prune_method, feature_source=None, input_dim=None)
            feature_source = selector_cls.default_feature_source
            cache[prune_method] = selector_cls(
                transient_config,
                input_dim=self._selector_input_dim(self.config, feature_source),
                llm_hidden_size=self._llm_hidden_size(self.config),
            )
        if selector_cls.in_llm:  # e.g. fastv's layer, against this language model's depth
            cache[prune_method].check_layer(len(self.get_decoder().layers))
        return budget, cache[prune_method]

    # ----------------------------------------------------------------- planning
    def place_visual_segments(
        self, input_ids: torch.Tensor, vision_inputs: dict[str, Any], need_features: bool
    ) -> list[tuple[VisualSegment, torch.Tensor, torch.Tensor]]:
        """Encode the images once and pair every segment with its placeholder positions.

        Returns [(segment, rows, cols)], where rows / cols: (N,) index the segment's N placeholder tokens in
        `input_ids` (B, L). Also used by the trainer, which replaces `segment.embeds` with trained ones.
        """
        hooks = self.prune_hooks
        segments = hooks.encode(self, input_ids, vision_inputs, need_features=need_features)
        placed = []
        for token_id in hooks.visual_token_ids(self):
            token_segments = [segment for segment in segments if segment.token_id == token_id]
            if not token_segments:  # as the stock models: placeholders of a modality without inputs stay text
                continue
            rows, cols = torch.nonzero(input_ids == token_id, as_tuple=True)
            sizes = [segment.embeds.shape[0] for segment in token_segments]
            if sum(sizes) != rows.numel():
                raise ValueError(
                    # The stock message's first words, which callers (and the upstream tests) match on.
                    f"Image features and image tokens do not match: `input_ids` hold {rows.numel()} placeholder "
                    f"tokens (id {token_id}) but the vision inputs "
                    f"produce {sum(sizes)} visual tokens"
                )
            offset = 0
            for segment, size in zip(token_segments, sizes, strict=True):
                placed.append((segment, rows[offset : offset + size], cols[offset : offset + size]))
                offset += size
        return placed

    def plan_pruning(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        vision_inputs: dict[str, Any],
        budget: float | int | AutoBudget,
        selector: TokenSelector,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        budget_scope: str = "image",
        language_inputs: dict[str, Any] | None = None,
    ) -> PrunePlan:
        """Encode the images, select per image (or per sample: `budget_scope`), compact. Shapes: input_ids (B, L).

        `language_inputs`: the caller's other language-model inputs; those the architecture names in
        `per_token_input_names` come back compacted in `plan.per_token_inputs`.
        """
        hooks = self.prune_hooks
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        placed = self.place_visual_segments(
            input_ids, vision_inputs, need_features=selector.feature_source == "vision_features"
        )
        inputs_embeds = self.get_input_embeddings()(input_ids)
        keep_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if placed:
            rows = torch.cat([seg_rows for _, seg_rows, _ in placed])
            cols = torch.cat([seg_cols for _, _, seg_cols in placed])
            inputs_embeds[rows, cols] = torch.cat([segment.embeds for segment, _, _ in placed]).to(inputs_embeds.dtype)
        units = selection_units(placed, budget_scope)
        if isinstance(budget, AutoBudget):  # every unit is scored; its count comes from its scores
            pruned_units = [(segment, seg_rows, seg_cols, None) for segment, seg_rows, seg_cols in units]
        else:  # units that lose tokens
            pruned_units = [
                (segment, seg_rows, seg_cols, tokens_to_keep(budget, seg_rows.numel()))
                for segment, seg_rows, seg_cols in units
                if tokens_to_keep(budget, seg_rows.numel()) < seg_rows.numel()
            ]
        deferred = None
        if pruned_units and selector.in_llm:  # selected inside the language model, from its attention
            deferred, pruned_units = pruned_units, []
        if pruned_units:  # selected together: one `select_segments` call (one scorer pass) per forward
            use_features = selector.feature_source == "vision_features"
            features = [segment.features if use_features else segment.embeds for segment, *_ in pruned_units]
            selector_dtype = next(selector.parameters(), features[0]).dtype
            features = [segment_features.to(selector_dtype) for segment_features in features]
            score_inputs = {}
            if selector.uses_prompt:
                prompts = prompt_embeds_by_row(inputs_embeds, attention_mask, self.visual_token_mask(input_ids))
                score_inputs["prompt_embeds"] = [prompts[int(seg_rows[0])] for _, seg_rows, *_ in pruned_units]
            drop_unselected(selector, budget, pruned_units, features, keep_mask, **score_inputs)
        if position_ids is None:
            position_ids = hooks.position_ids(self, input_ids, attention_mask, vision_inputs)
        plan = self._compact(input_ids, attention_mask, inputs_embeds, position_ids, keep_mask, labels, shift_labels)
        plan.in_llm_units = deferred
        side_inputs = placed_side_inputs(placed, input_ids)
        if side_inputs is not None:
            side_index = plan.source_index[..., None].expand(-1, -1, side_inputs.shape[-1])
            plan.side_inputs = side_inputs.gather(1, side_index) * plan.attention_mask[..., None].to(side_inputs.dtype)
        for name in hooks.per_token_input_names:
            if (language_inputs or {}).get(name) is not None:
                plan.per_token_inputs[name] = plan.gather(language_inputs[name], 0)
        return plan

    def in_llm_token_drop(
        self, plan: PrunePlan, budget: float | int | AutoBudget, selector: TokenSelector
    ) -> contextlib.AbstractContextManager:
        """The context in which the language model drops `plan.in_llm_units`' tokens after the selector's layer (a
        no-op context when nothing is to drop). Inside it, the prefill's attention row decides what each unit keeps,
        by `selector`'s rules, and `plan.keep_mask` (caller layout) records it."""
        units = plan.in_llm_units
        if not units:
            return contextlib.nullcontext()
        batch, caller_length = plan.keep_mask.shape

        def decide(row: torch.Tensor) -> torch.Tensor:
            # `generate` repeats each prompt for beams / returned sequences (repeat_interleave): decide once per prompt.
            repeats = row.shape[0] // batch
            scores = plan.scatter(row[::repeats], caller_length)  # the plan's layout -> the caller's
            features = [scores[rows, cols][:, None] for _, rows, cols, _ in units]
            drop_unselected(selector, budget, units, features, plan.keep_mask)
            # In the plan's layout; its padding never reaches the compacted layers either.
            return plan.gather(plan.keep_mask, False).repeat_interleave(repeats, dim=0)

        layer = selector.check_layer(len(self.get_decoder().layers))
        return InLLMTokenDrop(self, layer, decide, plan.input_ids.shape[1])

    def visual_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) True at the visual placeholder tokens of `input_ids` (B, L)."""
        token_ids = torch.tensor(self.prune_hooks.visual_token_ids(self), device=input_ids.device)
        return torch.isin(input_ids, token_ids)

    def feeding_side_inputs(
        self, visual_mask: torch.Tensor, side_inputs: torch.Tensor | None
    ) -> contextlib.AbstractContextManager:
        """The context in which a stock forward reads `side_inputs` (B, l, D) at `visual_mask` (B, l); none for None."""
        if side_inputs is None:
            return contextlib.nullcontext()
        return self.prune_hooks.feed_side_inputs(self, visual_mask, side_inputs)

    def _compact(
        self, input_ids, attention_mask, inputs_embeds, position_ids, keep_mask, labels, shift_labels=None
    ) -> PrunePlan:
        # A row that attends only to dropped tokens keeps nothing: it becomes padding, as a fully masked row is.
        source_index, valid = left_padded_compaction(keep_mask & attention_mask.bool())
        compact_mask = valid.long()
        compact_length = compact_mask.shape[1]
        lengths = compact_mask.sum(-1)
        plan = PrunePlan(
            keep_mask=keep_mask,
            source_index=source_index,
            attention_mask=compact_mask,
            input_ids=None,
            inputs_embeds=None,
            position_ids=None,
        )
        pad_id = self.generation_config.pad_token_id
        plan.input_ids = plan.gather(input_ids, pad_id if isinstance(pad_id, int) else 0)
        embed_index = source_index[..., None].expand(-1, -1, inputs_embeds.shape[-1])
        plan.inputs_embeds = inputs_embeds.gather(1, embed_index) * compact_mask[..., None].to(inputs_embeds.dtype)
        plan.position_ids = plan.gather(position_ids, 0)
        if labels is not None:
            plan.labels = plan.gather(labels, -100)
            # Compaction can put padding in front of a row that had none; no padding slot may "predict" the
            # row's first real token, so the loss is the next-token loss over the kept sequence alone.
            first_kept = (compact_length - lengths).clamp(max=compact_length - 1)
            plan.labels[torch.arange(len(lengths)), first_kept] = -100
        if shift_labels is not None:
            # shift_labels[i] is the target of token i: after compaction, the label of the next kept token.
            next_kept = torch.cat([source_index[:, 1:], source_index[:, -1:] + 1], dim=-1) - 1
            plan.shift_labels = shift_labels.gather(-1, next_kept.clamp(min=0)).masked_fill(compact_mask == 0, -100)
        return plan

    def split_vision_inputs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(inputs that feed only the vision side, everything else). Public: trainers and probes use it."""
        names = self.prune_hooks.vision_input_names
        vision = {name: value for name, value in kwargs.items() if name in names}
        return vision, {name: value for name, value in kwargs.items() if name not in names}

    def base_forward(self, **kwargs):
        """The stock class's forward, never pruned (e.g. a trainer's forward on embeddings it built itself)."""
        return super().forward(**kwargs)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        prune_budget=None,
        prune_method=None,
        prune_budget_scope=None,
        **kwargs,
    ):
        """Stock forward plus `prune_budget` / `prune_method` / `prune_budget_scope`; the output carries `keep_mask` (B, L).

        With `return_dict=False` the output is the stock tuple (no `keep_mask`, as `generate`'s tensor output).
        """
        budget_scope = check_budget_scope(prune_budget_scope)
        budget, selector = self.resolve_pruning(prune_budget, prune_method)
        past = kwargs.get("past_key_values")
        refuse_pruned_cache(past)
        prefill = past is None or past.get_seq_length() == 0
        side_inputs = kwargs.pop(SIDE_INPUTS_KEY, None) or (None, None)  # set by a pruned `generate`
        if budget is None or input_ids is None or not prefill or not self.prune_hooks.has_visual_inputs(kwargs):
            with self.feeding_side_inputs(*side_inputs):
                outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            if input_ids is not None and isinstance(outputs, ModelOutput):
                outputs["keep_mask"] = torch.ones_like(input_ids, dtype=torch.bool)
            return outputs
        if kwargs.pop("inputs_embeds", None) is not None:  # an explicit None (PEFT passes one) is dropped
            raise ValueError("`inputs_embeds` cannot be combined with `prune_budget`: pruning needs `input_ids`")
        if selector.in_llm and (kwargs.get("labels") is not None or kwargs.get("shift_labels") is not None):
            raise ValueError(
                f"`labels` cannot be combined with an in-LLM `prune_method` ({type(selector).__name__}): its later "
                "layers produce no outputs at dropped tokens; compute the loss from the returned logits"
            )
        return_dict = kwargs.pop("return_dict", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        vision_inputs, language_kwargs = self.split_vision_inputs(kwargs)
        plan = self.plan_pruning(
            input_ids,
            attention_mask,
            vision_inputs,
            budget,
            selector,
            position_ids=language_kwargs.pop("position_ids", None),
            labels=language_kwargs.pop("labels", None),
            shift_labels=language_kwargs.pop("shift_labels", None),
            budget_scope=budget_scope,
            language_inputs=language_kwargs,
        )
        language_kwargs.update(plan.per_token_inputs)
        if plan.shift_labels is not None:
            language_kwargs["shift_labels"] = plan.shift_labels
        with (
            self.feeding_side_inputs(self.visual_token_mask(plan.input_ids), plan.side_inputs),
            self.in_llm_token_drop(plan, budget, selector) as drop,
        ):
            outputs = super().forward(
                input_ids=None,
                attention_mask=plan.attention_mask,
                inputs_embeds=plan.inputs_embeds,
                position_ids=plan.position_ids,
                labels=plan.labels,
                return_dict=True,
                **language_kwargs,
            )
        # Logits come back in the caller's layout (zeros at dropped tokens) unless only the last few were asked for.
        if not language_kwargs.get("logits_to_keep"):
            logits = outputs.logits
            if drop is not None:  # an in-LLM drop: its compacted prompt's slots -> the plan's
                logits = scatter_compacted(logits, drop.compact_source, drop.compact_valid, plan.input_ids.shape[1])
            outputs["logits"] = plan.scatter(logits, input_ids.shape[1])
        if not return_dict:
            return outputs.to_tuple()
        outputs["keep_mask"] = plan.keep_mask
        return outputs

    # ----------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, inputs=None, *args, prune_budget=None, prune_method=None, prune_budget_scope=None, **kwargs):
        """Stock `generate` plus `prune_budget` / `prune_method` / `prune_budget_scope`.

        Returns the caller's `input_ids` followed by the new tokens, as the stock model does (repeated per returned
        sequence with `num_return_sequences`); a dict-style output (`return_dict_in_generate=True`) also carries
        `keep_mask` (B, L). `max_length` / `min_length` count the caller's prompt, as in the stock model. The
        returned cache holds the kept sequence: passing it back as `past_key_values` raises.
        """
        budget_scope = check_budget_scope(prune_budget_scope)
        budget, selector = self.resolve_pruning(prune_budget, prune_method)
        refuse_pruned_cache(kwargs.get("past_key_values"))
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if budget is None or input_ids is None or not self.prune_hooks.has_visual_inputs(kwargs) or args:
            # prune_budget=1.0 keeps the forward passes of this call unpruned even when the config sets a default.
            output = super().generate(inputs, *args, prune_budget=1.0, **kwargs)
            if input_ids is not None and not isinstance(output, torch.Tensor):
                output["keep_mask"] = torch.ones_like(input_ids, dtype=torch.bool)
            return output
        if kwargs.pop("inputs_embeds", None) is not None:  # an explicit None (PEFT passes one) is dropped
            raise ValueError("`inputs_embeds` cannot be combined with `prune_budget`: pruning needs `input_ids`")
        user_cache = kwargs.get("past_key_values")
        if user_cache is not None and user_cache.get_seq_length() > 0:
            raise ValueError(
                "a filled `past_key_values` cannot be combined with `prune_budget`: pruning happens at prefill"
            )
        if selector.in_llm:
            config = kwargs.get("generation_config")
            for name in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit"):
                if kwargs.get(name) is not None or getattr(config, name, None) is not None:
                    raise ValueError(
                        f"`{name}` (assisted decoding) cannot be combined with an in-LLM `prune_method` "
                        f"({type(selector).__name__}): checking drafts rewinds a cache whose later layers hold "
                        "only the kept tokens"
                    )
        kwargs.pop("input_ids", None)
        vision_inputs, generate_kwargs = self.split_vision_inputs(kwargs)
        plan = self.plan_pruning(
            input_ids,
            generate_kwargs.pop("attention_mask", None),
            vision_inputs,
            budget,
            selector,
            position_ids=generate_kwargs.pop("position_ids", None),
            budget_scope=budget_scope,
            language_inputs=generate_kwargs,
        )
        generate_kwargs.update(plan.per_token_inputs)
        self.prune_hooks.after_generate_plan(self, plan)
        generate_kwargs.update(
            self._caller_length_limits(generate_kwargs, input_ids.shape[1] - plan.input_ids.shape[1])
        )
        if generate_kwargs.get("streamer") is not None:
            generate_kwargs["streamer"] = CallerPromptStreamer(generate_kwargs["streamer"], input_ids)
        if plan.side_inputs is not None:
            generate_kwargs["kept_prompt_side_inputs"] = plan.side_inputs
        with self.in_llm_token_drop(plan, budget, selector):
            output = super().generate(
                input_ids=plan.input_ids,
                attention_mask=plan.attention_mask,
                position_ids=plan.position_ids,
                kept_prompt_embeds=plan.inputs_embeds,
                **generate_kwargs,
            )
        is_tensor = isinstance(output, torch.Tensor)
        if not plan.keep_mask.all():
            for cache in (user_cache, None if is_tensor else output.get("past_key_values")):
                if cache is not None:
                    setattr(cache, PRUNED_CACHE_ATTRIBUTE, plan.keep_mask)
        sequences = output if is_tensor else output.sequences
        # Beam search and sampling with num_return_sequences return several rows per prompt, grouped by prompt.
        prompt = input_ids.to(sequences.device).repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
        restored = torch.cat([prompt, sequences[:, plan.input_ids.shape[1] :]], dim=-1)
        if is_tensor:
            return restored
        output["sequences"] = restored
        output["keep_mask"] = plan.keep_mask
        return output

    def _caller_length_limits(self, generate_kwargs: dict[str, Any], dropped_columns: int) -> dict[str, int]:
        """`max_length` / `min_length` for the kept prompt, from the caller's values, which count the caller's prompt.

        Only limits set by the caller (call, `generation_config` or the model's) move; a `max_new_tokens` /
        `min_new_tokens` takes precedence, as in the stock `generate`.
        """
        configs = [generate_kwargs.get("generation_config"), self.generation_config]

        def lookup(name: str):
            values = [generate_kwargs.get(name), *(getattr(config, name, None) for config in configs)]
            return next((value for value in values if value is not None), None)

        limits = {}
        for total, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
            if lookup(new) is None and lookup(total) is not None:
                limits[total] = max(lookup(total) - dropped_columns, 0)
        return limits

    def prepare_inputs_for_generation(
        self, input_ids, *args, kept_prompt_embeds=None, kept_prompt_side_inputs=None, **kwargs
    ):
        """Stock preparation; in a pruned `generate`, the kept prompt's positions read `kept_prompt_embeds` (B, Lc, H)
        and, where the architecture has them, `kept_prompt_side_inputs` (B, Lc, D).

        So every forward that (re)reads the prompt sees the kept visual tokens: the prefill, each step with
        `use_cache=False`, and assisted decoding's first pass over prompt plus candidates.
        """
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        new_ids = model_inputs.get("input_ids")
        cache = model_inputs.get("past_key_values")
        start = cache.get_seq_length() if cache is not None else 0
        if kept_prompt_embeds is None or new_ids is None or start >= kept_prompt_embeds.shape[1]:
            return model_inputs
        embeds = self.get_input_embeddings()(new_ids)
        from_prompt = min(kept_prompt_embeds.shape[1] - start, new_ids.shape[1])
        embeds[:, :from_prompt] = kept_prompt_embeds[:, start : start + from_prompt].to(embeds.dtype)
        if kept_prompt_side_inputs is not None:
            side_inputs = kept_prompt_side_inputs.new_zeros(*new_ids.shape, kept_prompt_side_inputs.shape[-1])
            side_inputs[:, :from_prompt] = kept_prompt_side_inputs[:, start : start + from_prompt]
            visual_mask = self.visual_token_mask(new_ids)
            visual_mask[:, from_prompt:] = False  # a generated token is never a visual one, whatever its id
            model_inputs[SIDE_INPUTS_KEY] = (visual_mask, side_inputs)
        model_inputs["input_ids"], model_inputs["inputs_embeds"] = None, embeds
        return model_inputs

    def _get_candidate_generator(self, *args, **kwargs):
        # A stock assistant model knows neither argument; it drafts from the kept prompt's ids (drafts are checked).
        generator = super()._get_candidate_generator(*args, **kwargs)
        assistant = getattr(generator, "assistant_model", None)
        if assistant is not None and not isinstance(assistant, TokenPruningMixin):
            for name in ("kept_prompt_embeds", "kept_prompt_side_inputs", "prune_budget"):
                generator.assistant_kwargs.pop(name, None)
        return generator
