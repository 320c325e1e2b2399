"""Checkpoint conversion between Hugging Face, Paddle and MindSpore formats (streaming)."""
