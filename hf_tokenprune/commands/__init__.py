"""Thin `hf-tokenprune` command modules: an arguments dataclass and a `run_*` function each (as trl's `scripts/`)."""
