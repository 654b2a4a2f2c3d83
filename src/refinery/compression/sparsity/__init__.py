"""N:M sparsity: mask utilities, one-shot baselines (magnitude, Wanda, SparseGPT) and MaskLLM."""
