"""The open registry of pruned architectures: stock `transformers` class -> its drop-in `Pruned*` subclass.

Each `modeling_pruned_<arch>.py` registers its class with one `register_pruned_class` line, and importing
`builtin_architectures` imports every built-in file. `hf_tokenprune.get_pruned_model` finds the class here.

Imports only the standard library and transformers: it ships to the Hub as remote code.
"""

from __future__ import annotations

from transformers.models.auto import modeling_auto

_PRUNED_CLASSES: dict[type, type] = {}
#: Prefix of the keys under which pruned class names are listed in transformers' `*_MAPPING_NAMES` tables. No config
#: has such a model type, so the Auto classes (which join these tables with the config table) never see the entries.
LISTING_PREFIX = "hf_tokenprune:"


def list_beside_stock_class(pruned_cls: type, stock: type) -> None:
    """List `pruned_cls` by name wherever transformers lists `stock` by name in a task table.

    Pipelines check the model's class name against those tables (`Pipeline.check_model_type`), so without this
    `pipeline("image-text-to-text", model=pruned)` logs that the model "is not supported". The Auto classes are
    unchanged: loading a stock checkpoint still gives the stock class.
    """
    for name in dir(modeling_auto):
        table = getattr(modeling_auto, name)
        if not (name.endswith("_MAPPING_NAMES") and isinstance(table, dict)):
            continue
        listed = any(stock.__name__ == value or stock.__name__ in value for value in table.values() if value)
        if listed:
            table[LISTING_PREFIX + pruned_cls.__name__] = pruned_cls.__name__


def register_pruned_class(pruned_cls: type, *, overwrite: bool = False) -> type:
    """Register `pruned_cls` (a `TokenPruningMixin` subclass of one stock class) for that stock class; returns it."""
    stock = pruned_cls._stock_class()
    if stock in _PRUNED_CLASSES and _PRUNED_CLASSES[stock] is not pruned_cls and not overwrite:
        raise ValueError(
            f"{stock.__name__} already has a pruned class ({_PRUNED_CLASSES[stock].__name__}); "
            "pass overwrite=True to replace it"
        )
    _PRUNED_CLASSES[stock] = pruned_cls
    list_beside_stock_class(pruned_cls, stock)
    return pruned_cls


def get_pruned_class(model_class: type) -> type | None:
    """The pruned class for `model_class`: the registration of its most derived registered stock class, or None."""
    return next((_PRUNED_CLASSES[klass] for klass in model_class.__mro__ if klass in _PRUNED_CLASSES), None)


def pruned_classes() -> dict[type, type]:
    """{stock class: pruned class} of every registered architecture (a copy)."""
    return dict(_PRUNED_CLASSES)
