"""Training: data pipelines, models and trainers (needs the `train` extra)."""
