"""One intra-op thread per pytest-xdist worker: `-n 2` on 2 cores would otherwise run 4 busy threads."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
