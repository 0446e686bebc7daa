"""Datasets on disk: raw-file readers (Criteo, Avazu), the synthetic generator,
and the array directory every later stage reads."""
