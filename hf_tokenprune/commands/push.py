"""`hf-tokenprune push DIR --repo-id user/name`: upload a saved pruned folder with a rendered model card."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class PushArguments:
    """Upload a saved pruned folder to the Hub in one commit, with a model card rendered for the repo id.

    `hf-tokenprune push DIR --repo-id user/name`: the folder may come first without its flag.
    """

    positional: ClassVar[tuple[str, ...]] = ("folder",)

    folder: str = field(metadata={"help": "Folder written by save_pretrained (adapter or merged form)."})
    repo_id: str = field(metadata={"help": "Hub repo id, 'namespace/name'; created when missing."})
    eval_results: str | None = field(
        default=None, metadata={"help": "JSON file of evaluation results, uploaded as eval_results.json."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo private (an existing repo is unchanged)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created when missing)."})
    token: str | None = field(default=None, metadata={"help": "Hub token; default: the logged-in one."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing directly."})


def run_push(args: PushArguments):
    from ..hub import push_folder

    commit = push_folder(
        args.folder,
        args.repo_id,
        token=args.token,
        private=True if args.private else None,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        eval_results=args.eval_results,
    )
    print(commit.commit_url)
    if commit.pr_url:
        print(commit.pr_url)
    return commit
