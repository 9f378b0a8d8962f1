"""Chunking, overlap-add and diffusion sampling: pure functions over model callables."""
