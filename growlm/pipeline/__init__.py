"""The end-to-end growth pipeline: base -> G_stack -> continue vs scratch, evaluation, cards, push, FLOPs saving.

Entry points: `scripts/pipeline.py --config configs/pipeline/<name>.yaml` and `scripts/demo.py` (`make demo`);
in Python, `growlm.pipeline.run.run_pipeline(growlm.pipeline.config.load_config(path))`.
"""
