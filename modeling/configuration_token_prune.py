"""`TokenPruneConfig`: the PEFT-style adapter config of a visual-token selector.

`TokenPruneConfig` holds the fields every method shares; each method subclasses it with its own fields in its
`selector_<method>.py` (as peft's `LoraConfig` subclasses `PeftConfig`) and registers the pair with
`register_selector`. `TokenPruneConfig(method=name, **fields)` and `from_dict` dispatch on `method` to the
registered class, so a `token_prune_config.json` stays one flat mapping.

Imports only the standard library (and, at call time, the sibling registry), so it ships to the Hub as remote code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CONFIG_NAME = "token_prune_config.json"
FORMAT_VERSION = 1
FEATURE_SOURCES = ("projector_output", "vision_features")
DEFAULT_METHOD = "visionselector"


#: `prune_budget="auto"`: the selector picks each image's budget from its own scores (`AutoBudget`).
AUTO = "auto"


@dataclass(frozen=True)
class AutoBudget:
    """An adaptive budget: each image (or frame) keeps the fewest tokens whose softmax mass (of its z-scored token
    scores, `selection_ops.auto_keep_count`) reaches `threshold`, bounded by `min_fraction` and `max_fraction` of its
    tokens (rounded as a float budget is).

    Only methods that score tokens (the learned ones) can use it. Written as a string, `"auto"` is the defaults and
    `"auto:THRESHOLD[:MIN_FRACTION[:MAX_FRACTION]]"` sets them in order; `str()` gives that form back, so a budget
    round-trips through configs, JSON results and command-line flags.

    Defaults: chosen on the testbed's validation split (docs/testbed.md, "Adaptive budgets"). The 10% floor matters for
    a question-aware scorer, whose few top scores hold nearly all the mass: with a 2% floor it kept 5-11 of 225 tokens
    at thresholds 0.5-0.9 (test split), 15-19 points below a fixed 5%.

    Fields:
        threshold: score mass in (0, 1] the kept tokens must reach (softmax over the image's scores).
        min_fraction: fewest tokens kept, as a fraction in (0, 1] of the image's tokens (at least one token).
        max_fraction: most tokens kept, as a fraction in [min_fraction, 1].
    """

    threshold: float = 0.9
    min_fraction: float = 0.1
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("threshold", "min_fraction", "max_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"`AutoBudget.{name}` must be a number in (0, 1], got {value!r}")
        if self.max_fraction < self.min_fraction:
            raise ValueError(
                f"`AutoBudget.max_fraction` ({self.max_fraction}) must be >= `min_fraction` ({self.min_fraction})"
            )

    @classmethod
    def from_string(cls, text: str, name: str = "prune_budget") -> AutoBudget:
        """Parse `"auto[:threshold[:min_fraction[:max_fraction]]]"`; raises ValueError naming `name`."""
        head, *values = text.split(":")
        if head != AUTO or len(values) > 3:
            raise ValueError(
                f"`{name}` as a string must be 'auto' or 'auto:THRESHOLD[:MIN_FRACTION[:MAX_FRACTION]]', got {text!r}"
            )
        try:
            numbers = [float(value) for value in values]
        except ValueError:
            raise ValueError(f"`{name}`: the numbers after 'auto:' must be floats, got {text!r}") from None
        try:
            return cls(*numbers)
        except ValueError as error:
            raise ValueError(f"`{name}` {text!r}: {error}") from None

    def __str__(self) -> str:
        values = [self.threshold, self.min_fraction, self.max_fraction]
        defaults = [AutoBudget.threshold, AutoBudget.min_fraction, AutoBudget.max_fraction]
        while values and values[-1] == defaults[len(values) - 1]:
            values.pop()
        return ":".join([AUTO, *(f"{value:g}" for value in values)])


def check_budget(budget: Any, name: str = "prune_budget", allow_auto: bool = True) -> float | int | AutoBudget | None:
    """Validate a pruning budget and return it, with an "auto" string parsed into its `AutoBudget`.

    A float in (0, 1] is the fraction of each image's tokens to keep; an int >= 1 is a token count per
    image; `"auto..."` or an `AutoBudget` (unless `allow_auto` is False) lets the selector choose per image;
    `None` means "no pruning". Raises before any compute, naming `name` and the allowed range.
    """
    if budget is None:
        return None
    if allow_auto and isinstance(budget, AutoBudget):
        return budget
    if allow_auto and isinstance(budget, str) and budget.split(":")[0] == AUTO:
        return AutoBudget.from_string(budget, name)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        allowed = "a float in (0, 1], an int >= 1" + (", 'auto' (or an AutoBudget)" if allow_auto else "")
        raise TypeError(f"`{name}` must be {allowed} or None, got {type(budget).__name__} {budget!r}")
    if isinstance(budget, float):
        if math.isnan(budget) or not 0.0 < budget <= 1.0:
            raise ValueError(f"`{name}` as a float must be in (0, 1] (a fraction of each image's tokens), got {budget}")
    elif budget < 1:
        raise ValueError(f"`{name}` as an int must be >= 1 (tokens kept per image), got {budget}")
    return budget


def check_int(value: Any, name: str, minimum: int | None = None, optional: bool = False) -> None:
    """Raise ValueError naming `name` unless `value` is an int (>= `minimum` when given), or None if `optional`."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        allowed = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if optional else "")
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}")


def check_float(value: Any, name: str, minimum: float = 0.0) -> None:
    """Raise ValueError naming `name` unless `value` is a finite number >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"`{name}` must be a finite number >= {minimum}, got {value!r}")


# Format 1 wrote these method fields into every file whatever its method (and callers pass them flat): a method
# without the field validates it as format 1 did, then ignores it, so old files and calls read unchanged.
FORMAT_1_METHOD_FIELDS = {
    "scorer_hidden_size": lambda value, name: check_int(value, name, 1, optional=True),
    "scorer_num_layers": lambda value, name: check_int(value, name, 1, optional=True),
    "scorer_num_heads": lambda value, name: check_int(value, name, 1, optional=True),
    "scorer_init_std": lambda value, name: check_float(value, name),
    "seed": lambda value, name: check_int(value, name),
    "dart_num_pivots": lambda value, name: check_int(value, name, 1),
}


#: method name -> its config class. `token_selectors.register_selector` fills it; it lives here so that the config
#: can dispatch without importing the selector registry (which imports this module).
METHOD_CONFIG_CLASSES: dict[str, type[TokenPruneConfig]] = {}


def config_class_for(method: Any) -> type[TokenPruneConfig]:
    """The config class registered for `method`, or `TokenPruneConfig` itself for an unregistered name."""
    return (METHOD_CONFIG_CLASSES.get(method) if isinstance(method, str) else None) or TokenPruneConfig


def _split_fields(config_cls: type[TokenPruneConfig], data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the entries of `data` that are fields of `config_cls`, the names that are not and are not format-1 fields).

    Format-1 method fields that `config_cls` does not have are validated and dropped.
    """
    known = {item.name for item in fields(config_cls)}
    kept, unknown = {}, []
    for name, value in data.items():
        if name in known:
            kept[name] = value
        elif name in FORMAT_1_METHOD_FIELDS:
            FORMAT_1_METHOD_FIELDS[name](value, name)
        else:
            unknown.append(name)
    return kept, sorted(unknown)


class _DispatchOnMethod(type):
    """`TokenPruneConfig(method=name, **fields)` builds the config class registered for `name`."""

    def __call__(cls, *args: Any, **kwargs: Any):
        if cls is TokenPruneConfig and not args:
            config_cls = config_class_for(kwargs.get("method", DEFAULT_METHOD))
            kwargs, unknown = _split_fields(config_cls, kwargs)
            if unknown:
                raise TypeError(f"{config_cls.__name__} got unexpected field(s) {unknown}")
            return super(_DispatchOnMethod, config_cls).__call__(**kwargs)
        return super().__call__(*args, **kwargs)


@dataclass
class TokenPruneConfig(metaclass=_DispatchOnMethod):
    """Configuration of a visual-token selector attached to a vision-language model: the fields every method shares.

    A method's own fields (scorer sizes, seeds, ...) live in its config subclass, next to its selector in
    `selector_<method>.py`.

    Fields:
        method: registered selector name (`visionselector`, `autoselect`, `reconstruction`, `random`, ...).
        budget: default budget used when `prune_budget` is not passed; `None` disables pruning by default.
        feature_source: what the selector reads: `projector_output` (LLM-width tokens) or `vision_features`
            (the features that feed the projector, grouped per LLM token); `None` picks the method's default.
        input_dim: feature width the scorer was built for; filled in when the selector is attached.
        base_model_name_or_path: base model the selector was trained for (Hub id or path).
        base_model_revision: revision of that base model.
        base_model_type: `model_type` of that base model; a mismatch is refused on attach.
        format_version: version of this file's format.
    """

    method: str = field(default=DEFAULT_METHOD, metadata={"help": "Registered selector name."})
    budget: float | int | str | None = field(
        default=None,
        metadata={
            "help": "Default budget: float in (0, 1] = fraction per image, int >= 1 = tokens per image, 'auto' (or "
            "'auto:THRESHOLD[:MIN_FRACTION[:MAX_FRACTION]]', see AutoBudget) = chosen per image, None = off."
        },
    )
    feature_source: str | None = field(
        default=None,
        metadata={"help": f"Features the selector reads, one of {FEATURE_SOURCES}; None = the method's default."},
    )
    input_dim: int | None = field(
        default=None, metadata={"help": "Feature width the scorer was built for; set when the selector is attached."}
    )
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model (Hub id or path) the selector was trained for."}
    )
    base_model_revision: str | None = field(default=None, metadata={"help": "Revision of the base model."})
    base_model_type: str | None = field(
        default=None, metadata={"help": "`model_type` of the base model; a different base is refused."}
    )
    format_version: int = field(default=FORMAT_VERSION, metadata={"help": "Version of this config's format."})

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"`method` must be a non-empty string, got {self.method!r}")
        config_cls = config_class_for(self.method)
        if not isinstance(self, config_cls):
            raise ValueError(
                f"`method` {self.method!r} is configured by {config_cls.__name__}, not {type(self).__name__}"
            )
        budget = check_budget(self.budget, "budget")
        if isinstance(budget, AutoBudget):
            self.budget = str(budget)  # stored as its string, so the file stays JSON
        if self.feature_source is not None and self.feature_source not in FEATURE_SOURCES:
            raise ValueError(f"`feature_source` must be one of {FEATURE_SOURCES} or None, got {self.feature_source!r}")
        check_int(self.input_dim, "input_dim", 1, optional=True)
        if not isinstance(self.format_version, int) or self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"`format_version` {self.format_version!r} is newer than this code understands ({FORMAT_VERSION}); "
                "upgrade hf-tokenprune / the remote code"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_method(self, method: str, **changes: Any) -> TokenPruneConfig:
        """A config of `method` with this config's shared fields, the method fields both share, and `changes`."""
        config_cls = config_class_for(method)
        own = {item.name for item in fields(config_cls)}
        values = {name: value for name, value in self.to_dict().items() if name in own}
        return config_cls(**{**values, **changes, "method": method})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenPruneConfig:
        """Build the config class registered for `data["method"]`; format-1 fields of other methods are ignored."""
        config_cls = config_class_for(data.get("method", DEFAULT_METHOD)) if cls is TokenPruneConfig else cls
        values, unknown = _split_fields(config_cls, data)
        if unknown:
            known = sorted(item.name for item in fields(config_cls))
            raise ValueError(f"unknown field(s) {unknown} in {CONFIG_NAME}; known fields: {known}")
        return config_cls(**values)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> TokenPruneConfig:
        return cls.from_json_file(os.path.join(directory, CONFIG_NAME))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> TokenPruneConfig:
        """Read a `token_prune_config.json`; every error names the file."""
        path = str(path)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path!r} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path!r} must hold a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path!r}: {error}") from error
