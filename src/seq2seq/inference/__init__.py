"""Using a trained model: reading checkpoints and predicting in batches."""
