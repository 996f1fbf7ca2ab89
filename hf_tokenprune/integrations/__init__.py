"""Plugins of other tools that run pruned models; each imports its tool only in its own module.

`lmms_eval_models` is the payload of our `lmms_eval.models` entry point: lmms-eval calls it while it builds its model
registry, so it imports nothing but lmms-eval's manifest class (the model class itself loads when a run names it).
"""

from __future__ import annotations


def lmms_eval_models():
    """lmms-eval's manifest of `--model hf_tokenprune` (a chat model: the task's messages, the model's template)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="hf_tokenprune", chat_class_path="hf_tokenprune.integrations.lmms_eval.HFTokenPrune")
