"""hf-tokenprune: learned visual-token pruning for Hugging Face vision-language models."""

from .modeling.configuration_token_prune import TokenPruneConfig

__version__ = "0.1.0"

__all__ = ["TokenPruneConfig", "__version__"]
