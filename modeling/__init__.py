"""Remote-code files shipped to the Hub; inside the library this folder is `hf_tokenprune.modeling`.

Every file here imports only `torch`, `transformers` and its siblings (relative imports), because a Hub
user loading with `trust_remote_code=True` has only `transformers` installed.
"""
