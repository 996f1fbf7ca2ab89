"""Synthetic VQA testbed: task generator and the tiny trained VLM."""
