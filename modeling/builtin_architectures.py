"""Importing this module registers every built-in architecture (one line per `modeling_pruned_<arch>.py`)."""

from __future__ import annotations

from .modeling_pruned_gemma3 import PrunedGemma3ForConditionalGeneration
from .modeling_pruned_internvl import PrunedInternVLForConditionalGeneration
from .modeling_pruned_llava import PrunedLlavaForConditionalGeneration
from .modeling_pruned_llava_next import PrunedLlavaNextForConditionalGeneration
from .modeling_pruned_llava_onevision import PrunedLlavaOnevisionForConditionalGeneration
from .modeling_pruned_qwen2_5_vl import PrunedQwen2_5_VLForConditionalGeneration
from .modeling_pruned_qwen3_vl import PrunedQwen3VLForConditionalGeneration
from .modeling_pruned_smolvlm import PrunedIdefics3ForConditionalGeneration, PrunedSmolVLMForConditionalGeneration

__all__ = [
    "PrunedGemma3ForConditionalGeneration",
    "PrunedIdefics3ForConditionalGeneration",
    "PrunedInternVLForConditionalGeneration",
    "PrunedLlavaForConditionalGeneration",
    "PrunedLlavaNextForConditionalGeneration",
    "PrunedLlavaOnevisionForConditionalGeneration",
    "PrunedQwen2_5_VLForConditionalGeneration",
    "PrunedSmolVLMForConditionalGeneration",
    "PrunedQwen3VLForConditionalGeneration",
]
