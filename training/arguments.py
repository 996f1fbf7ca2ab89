"""`TokenPruneTrainingArguments`: `TrainingArguments` plus the selector recipes' hyperparameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..modeling.configuration_token_prune import check_budget


@dataclass
class TokenPruneTrainingArguments(TrainingArguments):
    """Hyperparameters of the three recipes; defaults are the papers' (sources in each help string).

    Defaults changed from `TrainingArguments`: `remove_unused_columns=False` (the collator needs the raw
    records) and `ddp_find_unused_parameters=True` (a batch without images leaves the scorer unused).
    """

    train_budget: float = field(
        default=0.2,
        metadata={
            "help": "visionselector / autoselect: fraction of each image's tokens the soft mask keeps (paper 000 Sec. 4.2: 0.2)."
        },
    )
    lambda_start: float = field(
        default=0.1, metadata={"help": "visionselector: BCE constraint weight at step 0 (paper 000 Eq. 12: 0.1)."}
    )
    lambda_end: float = field(
        default=2.0,
        metadata={"help": "visionselector: BCE constraint weight at the last step (paper 000 Eq. 12: 2.0)."},
    )
    tau_start: float = field(
        default=2.0, metadata={"help": "autoselect: Soft Top-K temperature at step 0 (paper 002 A: 2.0)."}
    )
    tau_end: float = field(
        default=0.1, metadata={"help": "autoselect: Soft Top-K temperature after annealing (paper 002 A: 0.1)."}
    )
    tau_anneal_steps: int | None = field(
        default=None,
        metadata={
            "help": "autoselect: steps of the cosine annealing of tau (paper 002 A: 2000); default: the whole run."
        },
    )
    gumbel_temperature: float = field(
        default=1.0, metadata={"help": "reconstruction: Gumbel-Softmax temperature of the keep/drop head."}
    )
    reg_p: float = field(
        default=0.6, metadata={"help": "reconstruction: upper bound p of Eq. 8 (paper 001 Sec. 4.4: 0.6)."}
    )
    reg_q: float = field(
        default=0.1, metadata={"help": "reconstruction: lower bound q of Eq. 8 (paper 001 Sec. 4.4: 0.1)."}
    )
    reg_alpha1: float = field(
        default=0.1, metadata={"help": "reconstruction: weight a1 of max(L, p) (paper 001: 0.1)."}
    )
    reg_alpha2: float = field(
        default=0.1, metadata={"help": "reconstruction: weight a2 of min(L, q) (paper 001: 0.1)."}
    )
    reconstructor_num_layers: int = field(
        default=4, metadata={"help": "reconstruction: Transformer layers of the feature reconstructor (paper 001: 4)."}
    )
    image_reconstruction: bool = field(
        default=False,
        metadata={"help": "reconstruction: also train the optional image reconstructor (paper 001 Eq. 6, 8)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads the raw conversation records."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=True, metadata={"help": "Kept True: a batch without images leaves the scorer out of the graph."}
    )

    def __post_init__(self) -> None:
        self.validate_recipe()
        super().__post_init__()

    def validate_recipe(self) -> None:
        """Raise ValueError naming the field for a value outside its range (before any model is touched)."""
        check_budget(self.train_budget, "train_budget")
        for name in ("lambda_start", "lambda_end", "reg_alpha1", "reg_alpha2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        for name in ("tau_start", "tau_end", "gumbel_temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
        if not 0.0 <= self.reg_q <= self.reg_p <= 1.0:
            raise ValueError(
                f"`reg_q` and `reg_p` must satisfy 0 <= reg_q <= reg_p <= 1, got {self.reg_q}, {self.reg_p}"
            )
        if self.tau_anneal_steps is not None and self.tau_anneal_steps < 1:
            raise ValueError(f"`tau_anneal_steps` must be an int >= 1 or None, got {self.tau_anneal_steps!r}")
        if self.reconstructor_num_layers < 1:
            raise ValueError(f"`reconstructor_num_layers` must be >= 1, got {self.reconstructor_num_layers!r}")
