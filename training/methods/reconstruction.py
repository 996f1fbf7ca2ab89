"""How `reconstruction` trains (paper 001): its arguments, recipe and train-only reconstructors.

No LLM: a Gumbel-Softmax keep mask M picks tokens, dropped features become the learnable mask embedding, a
feature reconstructor restores them. loss = MSE + a1 * max(L, p) - a2 * min(L, q), L = mean(M) per image,
p = train_budget and q = p / 6 unless `reg_p` / `reg_q` are set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...modeling.pruning import selection_units
from ...modeling.selector_autoselect import TokenTransformer
from ..callbacks import Schedule, linear_schedule
from ..recipe import (
    MetricSum,
    Recipe,
    RecipeArguments,
    check_non_negative,
    check_positive,
    polarization,
    register_recipe,
)
from ..relaxations import gumbel_keep_mask


@dataclass
class ReconstructionArguments(RecipeArguments):
    """Arguments of the `reconstruction` recipe (paper 001 Sec. 4.4 for the regulariser).

    Fields:
        gumbel_temperature: Gumbel-Softmax temperature of the keep/drop head.
        reg_p, reg_q: the bounds p and q of Eq. 8, 0 <= q <= p <= 1; by default p = train_budget and q = p / 6
            (`keep_rate_bounds`), so the keep rate the recipe trains toward follows `train_budget`.
        reg_alpha1, reg_alpha2: the weights a1 of max(L, p) and a2 of min(L, q).
        reconstructor_num_layers: Transformer layers of the feature reconstructor.
        image_reconstruction: also train the optional image reconstructor.
    """

    gumbel_temperature: float = field(
        default=1.0, metadata={"help": "reconstruction: Gumbel-Softmax temperature of the keep/drop head."}
    )
    reg_p: float | None = field(
        default=None,
        metadata={
            "help": "reconstruction: upper bound p of Eq. 8; None = train_budget (paper 001 Sec. 4.4: 0.6, with q = 0.1)."
        },
    )
    reg_q: float | None = field(
        default=None,
        metadata={"help": "reconstruction: lower bound q of Eq. 8; None = p / 6 (the paper's q / p = 0.1 / 0.6)."},
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

    def __post_init__(self) -> None:
        for name in ("reg_alpha1", "reg_alpha2"):
            check_non_negative(getattr(self, name), name)
        check_positive(self.gumbel_temperature, "gumbel_temperature")
        for name in ("reg_p", "reg_q"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"`{name}` must be a number in [0, 1] or None, got {value!r}")
        if self.reg_p is not None and self.reg_q is not None and self.reg_q > self.reg_p:
            raise ValueError(f"`reg_q` and `reg_p` must satisfy reg_q <= reg_p, got {self.reg_q}, {self.reg_p}")
        if self.reconstructor_num_layers < 1:
            raise ValueError(f"`reconstructor_num_layers` must be >= 1, got {self.reconstructor_num_layers!r}")
        super().__post_init__()


class ImageReconstructor(nn.Module):
    """Paper 001 Sec. 4.2: two Transformer layers over the reconstructed features, then the pixels of each token.

    The paper restores the spatial resolution with upsampling layers interleaved with residual blocks; here one
    linear layer maps each token to the pixels under it (the architecture's `token_pixels`), which needs no
    knowledge of the image layout and so works for every architecture that provides those pixels.
    """

    def __init__(self, model, input_dim: int, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.pixel_dim = model.prune_hooks.token_pixel_dim(model)
        self.body = TokenTransformer(input_dim, hidden_size, num_layers=2, num_heads=num_heads)
        self.head = nn.Linear(hidden_size, self.pixel_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> pixels: (N, pixel_dim)."""
        return self.head(self.body(features))


def clipped_regularizer(keep_fraction: torch.Tensor, p: float, q: float, a1: float, a2: float) -> torch.Tensor:
    """Paper 001 Eq. 4 / 8: a1 * max(L, p) - a2 * min(L, q); flat (no gradient) while q < L < p.

    keep_fraction: () or (n_images,), one L per image; returns the mean of the per-image terms.
    """
    return (a1 * torch.clamp(keep_fraction, min=p) - a2 * torch.clamp(keep_fraction, max=q)).mean()


# The paper's bounds, p = 0.6 and q = 0.1: q / p is kept when p follows `train_budget`.
PAPER_Q_OVER_P = 0.1 / 0.6


def keep_rate_bounds(args) -> tuple[float, float]:
    """(p, q) of Eq. 8: `reg_p` / `reg_q` when set, else p = `train_budget` and q = p * 0.1 / 0.6.

    The feature reconstruction loss always prefers more kept tokens, so it pushes L up to p, where the
    regulariser starts to push back: p is the keep rate the recipe trains toward. With the paper's fixed
    p = 0.6 a selector trained for a 10% budget would sit anywhere in [0.1, 0.6], the flat part of Eq. 8.
    """
    p = args.reg_p if args.reg_p is not None else float(args.train_budget)
    q = args.reg_q if args.reg_q is not None else p * PAPER_Q_OVER_P
    return p, min(q, p)


class ReconstructionRecipe(Recipe):
    """Paper 001, Sec. 4.1-4.4 and Eq. 8, on the frozen vision tower's features alone.

    The reconstruction distance is the mean squared error of features divided by their RMS over the image
    (the paper says "l2"; the normalisation makes the loss scale, and so the balance with the 0.1-weighted
    regulariser, the same for every vision tower).
    """

    uses_language_model = False

    def __init__(self, model, args) -> None:
        super().__init__(model, args)
        selector = model.token_selector
        config = model.token_prune_config
        hidden_size = selector.hidden_size  # the reconstructor is as wide as the selector
        self.reconstructor = TokenTransformer(
            selector.input_dim, hidden_size, num_layers=args.reconstructor_num_layers, num_heads=config.scorer_num_heads
        )
        self.reconstructor_head = nn.Linear(hidden_size, selector.input_dim)
        self.image_reconstructor = None
        if args.image_reconstruction and args.train_budget_scope != "image":
            raise ValueError(
                "`image_reconstruction` needs train_budget_scope='image' (its pixel targets are per image)"
            )
        if args.image_reconstruction:
            self.image_reconstructor = ImageReconstructor(
                model, selector.input_dim, hidden_size, config.scorer_num_heads
            )

    def schedules(self, args: ReconstructionArguments) -> list[Schedule]:
        # Constant (a linear schedule from the value to itself), declared so it is logged with the losses.
        return [Schedule("gumbel_temperature", linear_schedule, args.gumbel_temperature, args.gumbel_temperature)]

    def forward(self, model, batch):
        selector = model.token_selector
        input_ids = batch["input_ids"]
        vision_inputs, _ = model.split_vision_inputs(batch)
        with torch.no_grad():
            placed = model.place_visual_segments(input_ids, vision_inputs, need_features=True)
        if not placed:
            raise ValueError("the batch has no images: the reconstruction recipe trains on vision features alone")
        placed = selection_units(placed, self.args.train_budget_scope)
        dtype = next(selector.parameters()).dtype
        metrics = MetricSum()
        reconstruction, image_reconstruction, keep_fractions = 0.0, 0.0, []
        pixels = [None] * len(placed)
        if self.image_reconstructor is not None:
            pixels = model.prune_hooks.token_pixels(model, vision_inputs)
        for (segment, _, _), segment_pixels in zip(placed, pixels, strict=True):
            features = segment.features.to(dtype)
            scale = features.detach().pow(2).mean().sqrt().clamp_min(torch.finfo(dtype).tiny)
            logits = selector.keep_logits(features)
            keep = gumbel_keep_mask(logits, self.gumbel_temperature, hard=True)
            selected = keep[:, None] * features + (1 - keep[:, None]) * selector.mask_embedding
            restored = self.reconstructor_head(self.reconstructor(selected))
            error = F.mse_loss(restored / scale, features / scale)
            reconstruction = reconstruction + error / len(placed)
            if segment_pixels is not None:
                if segment_pixels.shape[0] != features.shape[0]:
                    raise ValueError(
                        f"`image_reconstruction`: {segment_pixels.shape[0]} pixel rows for {features.shape[0]} tokens"
                    )
                # Eq. 6: I_rec = R_im(F_rec); pixels come normalised by the processor.
                image_error = F.mse_loss(self.image_reconstructor(restored), segment_pixels.to(dtype))
                image_reconstruction = image_reconstruction + image_error / len(placed)
            keep_fractions.append(keep.mean())
            metrics.add("mask_polarization", polarization(torch.softmax(logits.detach().float(), dim=-1)[:, 1]))
        args = self.args
        keep_fraction = torch.stack(keep_fractions)
        # Per image, as the budget: the batch mean could sit inside [q, p] with every image outside it.
        regularizer = clipped_regularizer(keep_fraction, *keep_rate_bounds(args), args.reg_alpha1, args.reg_alpha2)
        loss = reconstruction + image_reconstruction + regularizer
        values = {
            "reconstruction_loss": float(reconstruction.detach()),
            **({"image_reconstruction_loss": float(image_reconstruction.detach())} if pixels[0] is not None else {}),
            "regularizer": float(regularizer.detach()),
            "mask_mass": float(keep_fraction.detach().mean()),
            **self.schedule_values(),
            **metrics.means(),
        }
        return {"loss": loss, "metrics": values}


register_recipe("reconstruction", ReconstructionArguments, ReconstructionRecipe)
