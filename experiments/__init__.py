"""Experiment configs: each module's `get_config()` returns an ExperimentConfig."""
