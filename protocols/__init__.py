"""Evaluation protocols, one module each, plus their shared maths."""
