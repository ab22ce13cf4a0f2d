"""Pure PyTorch: data, models, training, pruning, scoring, metrics and the pipeline.

Nothing here knows of HTTP, SQL or Celery; progress leaves through a callback.
"""
