"""Datasets on their real on-disk formats, and generators that write those formats."""
