"""Training: data sets, splits, the training loop and its CLI."""
