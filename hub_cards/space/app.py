"""Hugging Face Space: what visual-token pruning keeps, and what it costs (hf-tokenprune).

`hf-tokenprune push-space --repo-id you/name --model you/pruned-model` uploads this file with MODEL set; None runs
the testbed model bundled with hf-tokenprune (offline). On a GPU Space the app uses the GPU (`spaces.GPU`).
"""

from hf_tokenprune.space import SpaceArguments, launch_space

MODEL = None

if __name__ == "__main__":
    launch_space(SpaceArguments(model=MODEL or "testbed", host="0.0.0.0"))
