"""Evaluation with lm-evaluation-harness on the paper's tasks or the offline held-out tasks.

`growlm.eval.run.evaluate_model(EvalConfig(...))` runs the harness and writes `eval_results.json`
(schema in `growlm.eval.results`); `growlm.eval.build` rebuilds the offline task data in `tasks/`.
"""
