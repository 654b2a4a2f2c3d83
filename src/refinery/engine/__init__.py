"""The training engine: what every trainer needs at scale, in one place below the wings.

- :mod:`.config`   -- ``EngineConfig``: device, precision, activation checkpointing, micro-batching, log-prob chunks
- :mod:`.device`   -- device resolution, bf16 autocast, peak-memory accounting
- :mod:`.logprobs` -- token log-probs and entropy from hidden states in chunks (no ``[B, T, V]`` tensor)
- :mod:`.accum`    -- micro-batches with gradient accumulation under one global loss normalisation
- :mod:`.dist`     -- torchrun init, FSDP2 wrapping, rank sharding, metric reduction, sharded checkpoints
"""
