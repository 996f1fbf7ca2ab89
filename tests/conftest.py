"""One intra-op thread per pytest-xdist worker: `-n 2` on 2 cores would otherwise run 4 busy threads."""

import os
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import CommitInfo

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
if os.environ.get("HF_TOKENPRUNE_TEST_DEVICE", "cpu").startswith("cuda"):
    # The contract's oracles compare float32 runs to 1e-4: cuDNN's TF32 convolutions (the patch embeddings; on by
    # default, unlike TF32 matmuls) would differ between a batch and its rows by more than that.
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="module")
def base_models():
    """`base_models(arch, attn="eager")`: the tiny stock model of `arch` (`hf_tokenprune.testing.BUILDERS`), built once
    per test module and attention implementation."""
    from hf_tokenprune.testing import BUILDERS

    cache = {}

    def get(arch: str, attn: str = "eager"):
        if (arch, attn) not in cache:
            cache[arch, attn] = BUILDERS[arch](attn)
        return cache[arch, attn]

    return get


@pytest.fixture
def hub_calls(monkeypatch):
    """Record HfApi calls instead of making them: ("create_repo" | "create_branch" | "create_commit", repo_id, kwargs).

    A commit's kwargs also hold `uploaded`: {path_in_repo: bytes}, read during the call (an upload from a temporary
    folder is gone afterwards).
    """
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        operations = list(operations)
        uploaded = {}
        for operation in operations:
            source = operation.path_or_fileobj
            uploaded[operation.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        calls.append(("create_commit", repo_id, {"operations": operations, "uploaded": uploaded, **kwargs}))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc123",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="abc123",
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    return calls
