"""Celery workers for training and heatmap jobs."""
