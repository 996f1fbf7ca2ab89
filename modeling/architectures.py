"""The open registry of pruned architectures: stock `transformers` class -> its drop-in `Pruned*` subclass.

Each `modeling_pruned_<arch>.py` registers its class with one `register_pruned_class` line, and importing
`builtin_architectures` imports every built-in file. `hf_tokenprune.get_pruned_model` finds the class here.

Imports only the standard library: it ships to the Hub as remote code.
"""

from __future__ import annotations

_PRUNED_CLASSES: dict[type, type] = {}


def register_pruned_class(pruned_cls: type, *, overwrite: bool = False) -> type:
    """Register `pruned_cls` (a `TokenPruningMixin` subclass of one stock class) for that stock class; returns it."""
    stock = pruned_cls._stock_class()
    if stock in _PRUNED_CLASSES and _PRUNED_CLASSES[stock] is not pruned_cls and not overwrite:
        raise ValueError(
            f"{stock.__name__} already has a pruned class ({_PRUNED_CLASSES[stock].__name__}); "
            "pass overwrite=True to replace it"
        )
    _PRUNED_CLASSES[stock] = pruned_cls
    return pruned_cls


def get_pruned_class(model_class: type) -> type | None:
    """The pruned class for `model_class`: the registration of its most derived registered stock class, or None."""
    return next((_PRUNED_CLASSES[klass] for klass in model_class.__mro__ if klass in _PRUNED_CLASSES), None)


def pruned_classes() -> dict[type, type]:
    """{stock class: pruned class} of every registered architecture (a copy)."""
    return dict(_PRUNED_CLASSES)
