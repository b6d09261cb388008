"""Evaluation with lm-evaluation-harness on the paper's tasks or the offline held-out tasks."""
