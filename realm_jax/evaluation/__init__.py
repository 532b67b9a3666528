"""Measurement: accuracy with and without routes, pass@k, maj@k, intervals."""
