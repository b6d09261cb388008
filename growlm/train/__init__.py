"""Pretraining: typed config, optimizer, LR schedule, checkpoints, FLOPs accounting and the training loop."""
