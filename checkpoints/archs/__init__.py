"""Backbone families, one per module; each registers its architectures in ARCHS."""
