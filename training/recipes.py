"""The three training recipes, as modules the `Trainer` drives, and the wrapper that freezes the VLM.

`TokenPruneTrainingModel` wraps a pruned VLM: it freezes every base parameter, keeps the selector
trainable, and owns the train-only modules of the recipe (the autoselect denoiser, the reconstruction
reconstructor). Its `forward(**batch)` returns `{"loss", "metrics"}`, so the stock `Trainer` loop,
DDP (`accelerate launch`) and gradient accumulation work unchanged.

Per image (one `VisualSegment`), with k = tokens kept at `train_budget`:

- visionselector (paper 000): m = DifferentiableTopK(s, k) multiplies the projector output; the LLM
  sees every token. loss = CE + lambda_t * BCE(m, hard top-k).
- autoselect (papers 002, 004): alpha = SoftTopK(zscore(s) / tau, k); VP noise
  x~ = sqrt(alpha) x + sqrt(1 - alpha) eps on the pre-projector features; a diagonal-attention
  denoiser; then the frozen projector and LLM. loss = CE.
- reconstruction (paper 001): no LLM. M = Gumbel-Softmax keep mask; dropped features become the
  learnable mask embedding; a feature reconstructor restores the features.
  loss = MSE + a1 * max(L, p) - a2 * min(L, q), L = mean(M).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.pruning import TokenPruningMixin, tokens_to_keep
from ..modeling.selection_ops import differentiable_topk, gumbel_keep_mask, hard_topk_indices, soft_topk
from ..modeling.selector_autoselect import TokenTransformer
from .arguments import TokenPruneTrainingArguments

LEARNED_METHODS = ("visionselector", "autoselect", "reconstruction")
VP_EPS = 1e-6


class MetricSum:
    """Running means of per-image quantities within one forward call."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: total / self.counts[name] for name, total in self.sums.items()}


def polarization(mask: torch.Tensor) -> torch.Tensor:
    """mean |2m - 1|: 0 when every weight is 0.5, 1 when the mask is binary."""
    return (2 * mask.detach().float() - 1).abs().mean()


class Recipe(nn.Module):
    """Base of the per-method recipes. Schedule callbacks set the float attributes in `schedule_names`."""

    schedule_names: tuple[str, ...] = ()
    uses_language_model = True

    def __init__(self, model: TokenPruningMixin, args: TokenPruneTrainingArguments) -> None:
        super().__init__()
        self.args = args

    def segment_embeds(self, model, segment, num_keep: int, metrics: MetricSum) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (new embeds (N, llm_hidden) carrying the selector's gradient, auxiliary loss of this image)."""
        raise NotImplementedError

    def forward(self, model: TokenPruningMixin, batch: dict[str, Any]) -> dict[str, Any]:
        return self.language_forward(model, batch)

    def language_forward(self, model: TokenPruningMixin, batch: dict[str, Any]) -> dict[str, Any]:
        """Frozen VLM forward on the full sequence with each image's tokens replaced by `segment_embeds`."""
        batch = dict(batch)
        input_ids = batch.pop("input_ids")
        attention_mask = batch.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        labels = batch.pop("labels", None)
        if labels is None:
            raise ValueError("the batch has no `labels`: the language-model recipes need the answer tokens")
        vision_inputs, language_kwargs = model.split_vision_inputs(batch)
        selector = model.token_selector
        with torch.no_grad():
            placed = model.place_visual_segments(input_ids, vision_inputs, selector.feature_source == "vision_features")
            inputs_embeds = model.get_input_embeddings()(input_ids)
        metrics = MetricSum()
        auxiliary = inputs_embeds.new_zeros(())
        if placed:
            new_embeds = []
            for segment, rows, _ in placed:
                embeds, aux = self.segment_embeds(
                    model, segment, tokens_to_keep(self.args.train_budget, rows.numel()), metrics
                )
                new_embeds.append(embeds.to(inputs_embeds.dtype))
                auxiliary = auxiliary + aux / len(placed)
            rows = torch.cat([seg_rows for _, seg_rows, _ in placed])
            cols = torch.cat([seg_cols for _, _, seg_cols in placed])
            # Out of place, so autograd sees the selector's contribution.
            inputs_embeds = inputs_embeds.index_put((rows, cols), torch.cat(new_embeds))
        position_ids = model.prune_hooks.position_ids(model, input_ids, attention_mask, vision_inputs)
        outputs = model.base_forward(
            input_ids=None,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            **language_kwargs,
        )
        task_loss = outputs.loss
        loss = task_loss + auxiliary
        values = {"task_loss": float(task_loss.detach()), **self.schedule_values(), **metrics.means()}
        return {"loss": loss, "metrics": values}

    def schedule_values(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in self.schedule_names}


class VisionSelectorRecipe(Recipe):
    """Paper 000, Sec. 3.3-3.4: Differentiable Top-K soft mask times the projector output; CE + lambda_t BCE."""

    schedule_names = ("lambda_t",)

    def __init__(self, model, args) -> None:
        super().__init__(model, args)
        self.lambda_t = args.lambda_start

    def segment_embeds(self, model, segment, num_keep, metrics):
        selector = model.token_selector
        embeds = segment.embeds
        size = embeds.shape[0]
        if num_keep >= size:
            return embeds, embeds.new_zeros(())
        scores = selector.score(embeds.to(next(selector.parameters()).dtype)).float()
        soft = differentiable_topk(scores, num_keep)
        hard = torch.zeros_like(soft)
        hard[hard_topk_indices(scores.detach(), num_keep)] = 1.0
        eps = torch.finfo(soft.dtype).eps
        constraint = F.binary_cross_entropy(soft.clamp(eps, 1 - eps), hard)
        metrics.add("constraint_loss", constraint)
        metrics.add("mask_mass", soft.detach().sum() / size)
        metrics.add("topk_mass", (soft.detach() * hard).sum() / num_keep)
        metrics.add("mask_polarization", polarization(soft))
        return soft[:, None].to(embeds.dtype) * embeds, self.lambda_t * constraint


class DiagonalDenoiser(nn.Module):
    """Paper 002 Sec. 4.4: one Transformer block whose attention mask is the identity, so no token reads another.

    It works in a `hidden_size` space between two projections and adds its output to the throttled features;
    the output projection starts at zero, so at step 0 the frozen projector sees the throttled features
    unchanged. (The paper gives the block, not its width; a residual around in/out projections keeps it
    small on wide grouped features such as Qwen2.5-VL's 4 x 1280.)
    """

    def __init__(self, input_dim: int, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.block = TokenTransformer(input_dim, hidden_size, num_layers=1, num_heads=num_heads)
        self.output_proj = nn.Linear(hidden_size, input_dim)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (N, input_dim) -> (N, input_dim)."""
        size = features.shape[0]
        # True = may not attend: everything but the diagonal.
        diagonal_only = ~torch.eye(size, dtype=torch.bool, device=features.device)
        hidden = self.block.input_proj(features.to(self.block.input_proj.weight.dtype)).unsqueeze(0)
        for layer in self.block.layers:
            hidden = layer(hidden, src_mask=diagonal_only)
        hidden = self.block.final_norm(hidden.squeeze(0))
        return features + self.output_proj(hidden).to(features.dtype)


def vp_noise(features: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Paper 002 Eq. 5: sqrt(alpha) x + sqrt(1 - alpha) eps, per token.

    The paper assumes normalised tokens (eps ~ N(0, I)); pre-projector features here are not normalised
    (e.g. Qwen2.5-VL's merger input, before its RMSNorm), so eps is scaled by each token's RMS, which keeps
    Var(x~) = Var(x), the property the square roots are there for.
    """
    scale = features.detach().float().pow(2).mean(-1, keepdim=True).sqrt()
    noise = torch.randn_like(features, dtype=torch.float32) * scale
    # d sqrt(a) / da is infinite at a = 0 and d sqrt(1 - a) / da at a = 1, values a saturated Soft Top-K reaches.
    alpha = alpha[:, None].float().clamp(VP_EPS, 1 - VP_EPS)
    return (alpha.sqrt() * features.float() + (1 - alpha).sqrt() * noise).to(features.dtype)


class AutoSelectRecipe(Recipe):
    """Papers 002 / 004: z-scored logits / tau -> Soft Top-K -> VP noise -> diagonal denoiser -> frozen rest."""

    schedule_names = ("temperature",)

    def __init__(self, model, args) -> None:
        super().__init__(model, args)
        selector = model.token_selector
        config = model.token_prune_config
        self.temperature = args.tau_start
        self.denoiser = DiagonalDenoiser(selector.input_dim, selector.hidden_size, config.scorer_num_heads)

    def segment_embeds(self, model, segment, num_keep, metrics):
        selector = model.token_selector
        features = segment.features
        size = features.shape[0]
        dtype = next(selector.parameters()).dtype
        if num_keep >= size:
            alpha = features.new_ones(size, dtype=torch.float32)
        else:
            alpha = soft_topk(selector.score(features.to(dtype)).float(), num_keep, temperature=self.temperature)
        metrics.add("mask_mass", alpha.detach().sum() / size)
        metrics.add("mask_polarization", polarization(alpha))
        throttled = vp_noise(features.to(dtype), alpha)
        denoised = self.denoiser(throttled)
        embeds = model.prune_hooks.project_features(model, denoised.to(features.dtype))
        return embeds, embeds.new_zeros(())


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
    """Paper 001 Eq. 4 / 8: a1 * max(L, p) - a2 * min(L, q); flat (no gradient) while q < L < p."""
    return a1 * torch.clamp(keep_fraction, min=p) - a2 * torch.clamp(keep_fraction, max=q)


class ReconstructionRecipe(Recipe):
    """Paper 001, Sec. 4.1-4.4 and Eq. 8, on the frozen vision tower's features alone.

    The reconstruction distance is the mean squared error of features divided by their RMS over the image
    (the paper says "l2"; the normalisation makes the loss scale, and so the balance with the 0.1-weighted
    regulariser, the same for every vision tower).
    """

    schedule_names = ("gumbel_temperature",)
    uses_language_model = False

    def __init__(self, model, args) -> None:
        super().__init__(model, args)
        selector = model.token_selector
        config = model.token_prune_config
        self.gumbel_temperature = args.gumbel_temperature
        hidden_size = selector.hidden_size  # the reconstructor is as wide as the selector
        self.reconstructor = TokenTransformer(
            selector.input_dim, hidden_size, num_layers=args.reconstructor_num_layers, num_heads=config.scorer_num_heads
        )
        self.reconstructor_head = nn.Linear(hidden_size, selector.input_dim)
        self.image_reconstructor = None
        if args.image_reconstruction:
            self.image_reconstructor = ImageReconstructor(
                model, selector.input_dim, hidden_size, config.scorer_num_heads
            )

    def forward(self, model, batch):
        selector = model.token_selector
        input_ids = batch["input_ids"]
        vision_inputs, _ = model.split_vision_inputs(batch)
        with torch.no_grad():
            placed = model.place_visual_segments(input_ids, vision_inputs, need_features=True)
        if not placed:
            raise ValueError("the batch has no images: the reconstruction recipe trains on vision features alone")
        dtype = next(selector.parameters()).dtype
        metrics = MetricSum()
        reconstruction, image_reconstruction, keep_fraction = 0.0, 0.0, 0.0
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
            keep_fraction = keep_fraction + keep.mean() / len(placed)
            metrics.add("mask_polarization", polarization(torch.softmax(logits.detach().float(), dim=-1)[:, 1]))
        args = self.args
        regularizer = clipped_regularizer(keep_fraction, args.reg_p, args.reg_q, args.reg_alpha1, args.reg_alpha2)
        loss = reconstruction + image_reconstruction + regularizer
        values = {
            "reconstruction_loss": float(reconstruction.detach()),
            **({"image_reconstruction_loss": float(image_reconstruction.detach())} if pixels[0] is not None else {}),
            "regularizer": float(regularizer.detach()),
            "mask_mass": float(keep_fraction.detach()),
            **self.schedule_values(),
            **metrics.means(),
        }
        return {"loss": loss, "metrics": values}


RECIPES: dict[str, type[Recipe]] = {
    "visionselector": VisionSelectorRecipe,
    "autoselect": AutoSelectRecipe,
    "reconstruction": ReconstructionRecipe,
}


class TokenPruneTrainingModel(nn.Module):
    """What the `Trainer` trains: a pruned VLM whose base is frozen, plus the recipe's train-only modules.

    Attributes:
        model: the pruned VLM (shared, not copied); only `model.token_selector` trains.
        recipe: the method's `Recipe` (holds the denoiser / reconstructor and the schedule values).
    """

    def __init__(self, model: TokenPruningMixin, args: TokenPruneTrainingArguments) -> None:
        super().__init__()
        if not isinstance(model, TokenPruningMixin):
            raise TypeError(
                f"`model` must be a pruned model from hf_tokenprune.get_pruned_model, got {type(model).__name__}"
            )
        config = model.token_prune_config
        method = config.method if config is not None else None
        if method not in RECIPES or model.token_selector is None:
            raise ValueError(f"the model's selector method is {method!r}; training needs one of {list(RECIPES)}")
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model.token_selector.requires_grad_(True)
        self.model = model
        reference = next(model.token_selector.parameters())
        self.recipe = RECIPES[method](model, args).to(device=reference.device, dtype=reference.dtype)

    def forward(self, **batch) -> dict[str, Any]:
        return self.recipe(self.model, batch)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor, keyed as in this module: `model.token_selector.*` and `recipe.*`."""
        return {name: tensor.detach() for name, tensor in self.named_parameters() if tensor.requires_grad}

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """Checkpoint the frozen VLM's layers (called by `Trainer` for `activation_checkpointing=True`)."""
        self.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs
        )

    # The deprecated name, for `TrainingArguments(gradient_checkpointing=True)` code paths.
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)
