"""`hf-tokenprune push-space --repo-id you/name`: publish the Space demo (hub_cards/space/) for a pruned model."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hub import TESTBED


@dataclass
class PushSpaceArguments:
    """Publish the Space template for a pruned model (`hf-tokenprune push-space --repo-id you/name`).

    Fields: repo_id, model, private, token, commit_message.
    """

    repo_id: str = field(metadata={"help": "Space repo id, 'namespace/name'; created (Gradio SDK) when missing."})
    model: str = field(default=TESTBED, metadata={"help": "Pruned model repo (Hub id) the Space runs, or 'testbed'."})
    private: bool = field(default=False, metadata={"help": "Create the Space private (an existing one is unchanged)."})
    token: str | None = field(default=None, metadata={"help": "Hub token; default: the logged-in one."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})


def run_push_space(args: PushSpaceArguments):
    from ..hub import push_space

    private = True if args.private else None
    commit = push_space(args.repo_id, args.model, token=args.token, private=private, commit_message=args.commit_message)
    print(f"{commit.commit_url}\nhttps://huggingface.co/spaces/{args.repo_id}")
    return commit
