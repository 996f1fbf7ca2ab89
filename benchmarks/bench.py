"""The script behind `hf-tokenprune bench`: `python benchmarks/bench.py --preset qwen2.5-vl-7b ...`.

Every flag is `hf-tokenprune bench`'s (`--help` lists them); the logic lives in `hf_tokenprune.bench`.
"""

from __future__ import annotations

import sys

from hf_tokenprune.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
