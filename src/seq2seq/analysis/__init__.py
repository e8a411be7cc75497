"""Looking at trained models and finished runs: attention maps, sweep tables."""
