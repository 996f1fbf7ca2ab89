"""Importing this module registers every built-in architecture (one line per `modeling_pruned_<arch>.py`)."""

from __future__ import annotations

from .modeling_pruned_gemma3 import PrunedGemma3ForConditionalGeneration
from .modeling_pruned_internvl import PrunedInternVLForConditionalGeneration
from .modeling_pruned_llava import PrunedLlavaForConditionalGeneration
from .modeling_pruned_llava_next import PrunedLlavaNextForConditionalGeneration
from .modeling_pruned_qwen2_5_vl import PrunedQwen2_5_VLForConditionalGeneration

__all__ = [
    "PrunedGemma3ForConditionalGeneration",
    "PrunedInternVLForConditionalGeneration",
    "PrunedLlavaForConditionalGeneration",
    "PrunedLlavaNextForConditionalGeneration",
    "PrunedQwen2_5_VLForConditionalGeneration",
]
