"""`TokenPruneConfig`: the PEFT-style adapter config of a visual-token selector.

Imports only the standard library, so it ships to the Hub as remote code unchanged.
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


def check_budget(budget: Any, name: str = "prune_budget") -> float | int | None:
    """Validate a pruning budget and return it unchanged.

    A float in (0, 1] is the fraction of each image's tokens to keep; an int >= 1 is a token count per
    image; `None` means "no pruning". Raises before any compute, naming `name` and the allowed range.
    """
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(
            f"`{name}` must be a float in (0, 1], an int >= 1 or None, got {type(budget).__name__} {budget!r}"
        )
    if isinstance(budget, float):
        if math.isnan(budget) or not 0.0 < budget <= 1.0:
            raise ValueError(f"`{name}` as a float must be in (0, 1] (a fraction of each image's tokens), got {budget}")
    elif budget < 1:
        raise ValueError(f"`{name}` as an int must be >= 1 (tokens kept per image), got {budget}")
    return budget


@dataclass
class TokenPruneConfig:
    """Configuration of a visual-token selector attached to a vision-language model.

    Fields:
        method: registered selector name (`visionselector`, `autoselect`, `reconstruction`, `random`, ...).
        budget: default budget used when `prune_budget` is not passed; `None` disables pruning by default.
        feature_source: what the selector reads: `projector_output` (LLM-width tokens) or `vision_features`
            (the features that feed the projector, grouped per LLM token); `None` picks the method's default.
        scorer_hidden_size: width of a learned scorer; `None` picks the method's default.
        scorer_num_layers: Transformer layers of a learned scorer; `None` picks the method's default.
        scorer_num_heads: attention heads of a learned scorer with Transformer layers.
        scorer_init_std: std of the near-zero init of the visionselector projections.
        seed: seed of the `random` baseline, so repeated calls select the same tokens.
        dart_num_pivots: pivot tokens per image for the `dart` baseline.
        input_dim: feature width the scorer was built for; filled in when the selector is attached.
        base_model_name_or_path: base model the selector was trained for (Hub id or path).
        base_model_revision: revision of that base model.
        base_model_type: `model_type` of that base model; a mismatch is refused on attach.
        format_version: version of this file's format.
    """

    method: str = field(default="visionselector", metadata={"help": "Registered selector name."})
    budget: float | int | None = field(
        default=None,
        metadata={
            "help": "Default budget: float in (0, 1] = fraction per image, int >= 1 = tokens per image, None = off."
        },
    )
    feature_source: str | None = field(
        default=None,
        metadata={"help": f"Features the selector reads, one of {FEATURE_SOURCES}; None = the method's default."},
    )
    scorer_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden width of a learned scorer; None = the method's default."}
    )
    scorer_num_layers: int | None = field(
        default=None, metadata={"help": "Transformer layers of a learned scorer; None = the method's default."}
    )
    scorer_num_heads: int = field(default=4, metadata={"help": "Attention heads of a learned scorer (>= 1)."})
    scorer_init_std: float = field(
        default=1e-3, metadata={"help": "Std of the near-zero init of the visionselector Q/K projections (>= 0)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the `random` baseline."})
    dart_num_pivots: int = field(default=8, metadata={"help": "Pivot tokens per image for `dart` (>= 1)."})
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
        check_budget(self.budget, "budget")
        if self.feature_source is not None and self.feature_source not in FEATURE_SOURCES:
            raise ValueError(f"`feature_source` must be one of {FEATURE_SOURCES} or None, got {self.feature_source!r}")
        for name in ("scorer_hidden_size", "scorer_num_layers", "input_dim"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be an int >= 1 or None, got {value!r}")
        for name in ("scorer_num_heads", "dart_num_pivots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if not isinstance(self.scorer_init_std, (int, float)) or not self.scorer_init_std >= 0:
            raise ValueError(f"`scorer_init_std` must be a float >= 0, got {self.scorer_init_std!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"`seed` must be an int, got {self.seed!r}")
        if not isinstance(self.format_version, int) or self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"`format_version` {self.format_version!r} is newer than this code understands ({FORMAT_VERSION}); "
                "upgrade hf-tokenprune / the remote code"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenPruneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} in {CONFIG_NAME}; known fields: {sorted(known)}")
        return cls(**data)

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
