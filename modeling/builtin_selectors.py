"""Importing this module registers every built-in selector.

One explicit `from .module import Class` line per method, because Hugging Face's remote-code loader
copies exactly the sibling files named by such lines.
"""

from __future__ import annotations

from .selector_autoselect import AutoSelectScorer
from .selector_dart import DartSelector
from .selector_divprune import DivPruneSelector
from .selector_fastv import FastVSelector
from .selector_questionselector import QuestionSelectorScorer
from .selector_random import RandomSelector
from .selector_reconstruction import ReconstructionSelector
from .selector_uniform import UniformSelector
from .selector_visionselector import VisionSelectorScorer

__all__ = [
    "AutoSelectScorer",
    "DartSelector",
    "DivPruneSelector",
    "FastVSelector",
    "QuestionSelectorScorer",
    "RandomSelector",
    "ReconstructionSelector",
    "UniformSelector",
    "VisionSelectorScorer",
]
