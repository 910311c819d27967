"""Tiny random-weight pipelines for tests; fully offline. Importing this package is cheap."""
