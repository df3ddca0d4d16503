"""Pretraining recipes on one shared training loop."""
