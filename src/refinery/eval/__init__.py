"""Evaluation: held-out task accuracy (pass@k, benchmarks and perplexity come with their issues)."""
