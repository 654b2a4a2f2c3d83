"""Compression: 2:4 sparsity (magnitude, Wanda, SparseGPT, MaskLLM) and Puzzle."""
