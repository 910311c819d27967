"""Embedded and tiny CogVideoX pipelines, and the model presets."""
