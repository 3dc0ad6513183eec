"""Triton kernels (lowest layer: imports nothing from raggedvit)."""
