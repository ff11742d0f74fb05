"""Training machinery: distributed setup, optimisation, evaluation, checkpoints, metrics and the trainer."""
