"""Training: optimiser and schedule, checkpoints, distributed helpers, monitoring, the loop."""
