"""A `peft` LoRA adapter on the language model and a learned selector on the same pruned model.

Oracles: the LoRA merged into the base weights (`merge_and_unload` on a copy), the pruned model before LoRA,
the stock model with the LoRA alone, and the saved-then-reloaded adapters; all compared token for token.
"""

from __future__ import annotations

import copy
import re

import pytest
import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.testing import BUILDERS, IMAGE_SIZES, build_inputs, make_samples

ARCHS = list(BUILDERS)
BUDGET = 0.5
# The language model's attention projections only: the vision towers and the selector have `*_proj` layers too.
LANGUAGE_ATTENTION = (
    r"model\.(language_model|text_model)\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"  # SmolVLM: text_model
)


def pruned_model(arch: str):
    """Pruned tiny model with a random (so decisive) visionselector scorer; config budget `BUDGET`."""
    model = get_pruned_model(BUILDERS[arch](), TokenPruneConfig(method="visionselector", budget=BUDGET))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.token_selector.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def with_lora(model, task_type: str | None = None):
    torch.manual_seed(1)  # init_lora_weights=False draws lora_B at random, so the adapter changes the outputs
    config = LoraConfig(target_modules=LANGUAGE_ATTENTION, init_lora_weights=False, r=4, task_type=task_type)
    return get_peft_model(model, config)


def inputs_for(arch: str) -> dict:
    return build_inputs(arch, make_samples([2, 0, 1], IMAGE_SIZES[arch]))


def generate(model, inputs, **kwargs):
    return model.generate(**inputs, max_new_tokens=4, do_sample=False, **kwargs)


# No task type gives a plain `PeftModel`; "CAUSAL_LM" a `PeftModelForCausalLM`, whose own `generate` wraps ours.
@pytest.mark.parametrize("task_type", [None, "CAUSAL_LM"])
@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_generate_through_peft_matches_the_merged_lora(arch, task_type):
    inputs = inputs_for(arch)
    pruned = pruned_model(arch)
    without_lora = generate(pruned, inputs, prune_budget=BUDGET, return_dict_in_generate=True)
    peft_model = with_lora(pruned, task_type)

    out = generate(peft_model, inputs, prune_budget=BUDGET, return_dict_in_generate=True)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    assert type(merged) is type(pruned)
    assert not any(isinstance(module, BaseTunerLayer) for module in merged.modules())
    oracle = generate(merged, inputs, prune_budget=BUDGET, return_dict_in_generate=True)
    assert torch.equal(out.sequences, oracle.sequences)
    assert torch.equal(out.keep_mask, oracle.keep_mask)

    # The selection reads the projector output, which LoRA on the language model leaves alone.
    assert torch.equal(out.keep_mask, without_lora.keep_mask)
    visual = inputs["input_ids"] == pruned.config.image_token_id
    assert 0 < int(out.keep_mask[visual].sum()) < int(visual.sum())
    assert not torch.equal(out.sequences, without_lora.sequences), "LoRA did not change the generated tokens"
    # The config's budget applies through the PEFT wrapper too, and an unpruned call differs.
    assert torch.equal(generate(peft_model, inputs), out.sequences)
    assert not torch.equal(generate(peft_model, inputs, prune_budget=1.0), out.sequences)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_wraps_only_the_language_model_attention(arch):
    pruned = pruned_model(arch)
    selector = pruned.token_selector
    selector_parameters = [(name, id(p), p.detach().clone()) for name, p in selector.named_parameters()]
    peft_model = with_lora(pruned)

    wrapped = {name for name, module in pruned.named_modules() if isinstance(module, BaseTunerLayer)}
    layers = pruned.config.get_text_config().num_hidden_layers
    decoder = next(name for name, module in pruned.named_modules() if module is pruned.model.get_decoder())
    assert wrapped == {f"{decoder}.layers.{i}.self_attn.{p}_proj" for i in range(layers) for p in ("q", "k", "v", "o")}
    assert peft_model.get_base_model() is pruned
    assert pruned.token_selector is selector
    assert not any(isinstance(module, BaseTunerLayer) for module in selector.modules())
    after = list(selector.named_parameters())
    assert [(name, id(p)) for name, p in after] == [(name, ident) for name, ident, _ in selector_parameters]
    for (name, _, before), (_, parameter) in zip(selector_parameters, after, strict=True):
        assert torch.equal(before, parameter), name
    lora_parameters = {name for name, _ in peft_model.named_parameters() if "lora_" in name}
    assert lora_parameters and not any("token_selector" in name for name in lora_parameters)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_and_scorer_save_and_load_separately(arch, tmp_path):
    inputs = inputs_for(arch)
    pruned = pruned_model(arch)
    scorer_only = generate(pruned, inputs, prune_budget=BUDGET)
    peft_model = with_lora(pruned)
    combined = generate(peft_model, inputs, prune_budget=BUDGET)
    lora_only = generate(peft_model, inputs, prune_budget=1.0)
    base_dir, lora_dir, scorer_dir = tmp_path / "base", tmp_path / "lora", tmp_path / "scorer"
    BUILDERS[arch]().save_pretrained(base_dir)

    peft_model.save_pretrained(lora_dir)
    lora_tensors = safetensors.torch.load_file(str(lora_dir / "adapter_model.safetensors"))
    layers = pruned.config.get_text_config().num_hidden_layers
    assert len(lora_tensors) == layers * 4 * 2  # lora_A and lora_B of q, k, v, o in every layer
    pattern = re.compile(rf"base_model\.model\.{LANGUAGE_ATTENTION}\.lora_[AB]\.weight")
    assert all(pattern.fullmatch(name) for name in lora_tensors), sorted(lora_tensors)[:4]

    pruned.save_pretrained(scorer_dir, base_model_name_or_path=str(base_dir))
    weight_files = sorted(path.name for path in scorer_dir.iterdir() if path.suffix in (".safetensors", ".bin"))
    assert weight_files == ["token_selector.safetensors"]  # adapter form: no base (or LoRA) weights
    scorer_tensors = safetensors.torch.load_file(str(scorer_dir / "token_selector.safetensors"))
    assert set(scorer_tensors) == set(pruned.token_selector.state_dict())

    # Both adapters on a fresh base: the combined model's tokens.
    reloaded = PeftModel.from_pretrained(get_pruned_model(BUILDERS[arch](), scorer_dir), lora_dir)
    assert torch.equal(generate(reloaded, inputs, prune_budget=BUDGET), combined)
    # The adapter-form repo loads its base weights from `base_model_name_or_path`; LoRA goes on top.
    from_repo = PeftModel.from_pretrained(type(pruned).from_pretrained(scorer_dir), lora_dir)
    assert torch.equal(generate(from_repo, inputs, prune_budget=BUDGET), combined)
    # Each alone: LoRA on the stock model is the unpruned PEFT model; the scorer alone is the pruned model.
    assert torch.equal(generate(PeftModel.from_pretrained(BUILDERS[arch](), lora_dir), inputs), lora_only)
    assert torch.equal(generate(get_pruned_model(BUILDERS[arch](), scorer_dir), inputs), scorer_only)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_forward_through_peft_causal_lm_matches_the_merged_lora(arch):
    """`PeftModelForCausalLM.forward` passes `inputs_embeds=None` explicitly; the pruned forward must accept it."""
    inputs = inputs_for(arch)
    peft_model = with_lora(pruned_model(arch), "CAUSAL_LM")
    with torch.no_grad():
        out = peft_model(**inputs, prune_budget=BUDGET)
        oracle = copy.deepcopy(peft_model).merge_and_unload()(**inputs, prune_budget=BUDGET)
    assert torch.equal(out.keep_mask, oracle.keep_mask) and not out.keep_mask.all()
    torch.testing.assert_close(out.logits, oracle.logits, rtol=1e-4, atol=1e-5)


def test_merged_save_with_lora_injected_is_refused(tmp_path):
    peft_model = with_lora(pruned_model("llava"))
    with pytest.raises(ValueError, match="merge_and_unload"):
        peft_model.base_model.model.save_pretrained(tmp_path / "merged", merged=True)
    assert not (tmp_path / "merged").exists()
