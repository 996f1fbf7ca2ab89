"""Drop-in replacement: with no selector and no budget, a `Pruned*` class behaves exactly as the stock class.

Oracle throughout: the stock `transformers` class on the same weights and inputs. The upstream `transformers` test
files of the stock classes run against ours too (`../shared/upstream-tests/run.sh`, in `.ci/run`); the tests here
are our own, one per defect that run found.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_tokenprune import PRUNED_CLASSES, TokenPruneConfig, get_pruned_model
from hf_tokenprune.modeling.configuration_token_prune import CONFIG_NAME
from hf_tokenprune.testing import BUILDERS, IMAGE_SIZES, build_inputs, make_samples

ARCHS = list(BUILDERS)


@functools.cache
def stock_models(arch: str):
    return BUILDERS[arch]()


def pruned_class(base) -> type:
    return PRUNED_CLASSES[type(base)]


def batch_inputs(arch: str) -> dict:
    return build_inputs(arch, make_samples([2, 0, 1], IMAGE_SIZES[arch]))


def plain_checkpoint(base, folder):
    """`base` saved by the stock class: what a user's plain checkpoint (e.g. a Hub base model) holds."""
    base.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_without_selector_writes_the_stock_checkpoint(arch, tmp_path):
    """Defect 1: a model built from a config (no selector) saves as the stock class; every tensor reloads equal."""
    base = stock_models(arch)
    model = pruned_class(base)(base.config)
    model.load_state_dict(base.state_dict())
    model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / CONFIG_NAME).exists()
    for loader in (type(base), pruned_class(base)):
        reloaded = loader.from_pretrained(tmp_path / "saved")
        assert getattr(reloaded, "token_prune_config", None) is None
        expected = model.state_dict()
        for name, tensor in reloaded.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="merged.*token selector"):
        model.save_pretrained(tmp_path / "merged", merged=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_from_a_plain_checkpoint_is_the_stock_generate(arch, tmp_path):
    """Defect 2: `PrunedX.from_pretrained(plain checkpoint).generate(...)` runs, and equals the stock model's."""
    base = stock_models(arch)
    model = pruned_class(base).from_pretrained(plain_checkpoint(base, tmp_path))
    assert model.token_prune_config is None
    inputs = batch_inputs(arch)
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(**inputs, **settings), base.generate(**inputs, **settings))
    assert torch.equal(model.generate(**inputs, **settings, prune_budget=1.0), base.generate(**inputs, **settings))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_return_dict_false_gives_the_stock_tuple(arch):
    """Defect 3 (no budget): the stock tuple, element for element; with a budget: the dict's values but `keep_mask`."""
    base = stock_models(arch)
    model = get_pruned_model(base, TokenPruneConfig(method="divprune"))
    inputs = batch_inputs(arch)
    with torch.no_grad():
        expected = base(**inputs, return_dict=False)
        got = model(**inputs, return_dict=False)
        assert isinstance(got, tuple) and len(got) == len(expected)
        for got_item, expected_item in zip(got, expected, strict=True):
            if isinstance(expected_item, torch.Tensor):
                assert torch.equal(got_item, expected_item)
        as_dict = model(**inputs, prune_budget=0.3)
        as_tuple = model(**inputs, prune_budget=0.3, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict) - 1 and not as_dict.keep_mask.all()
    assert torch.equal(as_tuple[0], as_dict.logits)
    assert all(item is not as_dict.keep_mask for item in as_tuple)


@pytest.mark.parametrize("arch", ARCHS)
def test_missing_weights_are_initialised_as_the_stock_class_does(arch, tmp_path):
    """Defect 4: a weight missing from a checkpoint gets exactly the stock class's initialisation (same seed)."""
    base = stock_models(arch)
    folder = plain_checkpoint(base, tmp_path)
    state = load_file(folder / "model.safetensors")
    # One 2-D weight of the vision tower (`vision_tower` / Qwen's `visual`), as in the CLIP `fc1` case that was found.
    missing = next(
        name
        for name in state
        if ("vision" in name or "visual" in name) and name.endswith("weight") and state[name].ndim == 2
    )
    del state[missing]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    loaded = {}
    for loader in (type(base), pruned_class(base)):
        torch.manual_seed(0)
        loaded[loader] = loader.from_pretrained(folder).state_dict()
    stock, ours = loaded.values()
    assert set(stock) == set(ours)
    for name, tensor in stock.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)
    assert pruned_class(base).is_custom_code() is type(base).is_custom_code() is False


@pytest.mark.parametrize("arch", ARCHS)
def test_signatures_keep_the_stock_parameters(arch):
    """Defect 5: `**kwargs: Unpack[TransformersKwargs]` survives, so transformers sees `output_attentions` support."""
    base = stock_models(arch)
    ours = inspect.signature(pruned_class(base).forward).parameters
    stock = inspect.signature(type(base).forward).parameters
    assert ours["kwargs"].annotation is stock["kwargs"].annotation
    assert "output_attentions" in ours["kwargs"].annotation.__args__[0].__annotations__
    assert list(stock)[: len(stock) - 1] == list(ours)[: len(stock) - 1]
    assert {"prune_budget", "prune_method"} <= set(ours)
    # Generation tests read `prepare_inputs_for_generation`'s signature the same way (e.g. for `inputs_embeds`).
    stock_prepare = inspect.signature(type(base).prepare_inputs_for_generation).parameters
    assert set(stock_prepare) <= set(inspect.signature(pruned_class(base).prepare_inputs_for_generation).parameters)
