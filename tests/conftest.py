"""Shared fixtures: an isolated model cache, the public-data fixture, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's ~/.cache/refinery."""
    os.environ["REFINERY_CACHE"] = str(tmp_path_factory.mktemp("refinery-cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public data folder (env REFINERY_DATA, default ../shared/data); skips where it is absent."""
    root = Path(os.environ.get("REFINERY_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"public data not found at {root} (set REFINERY_DATA to the shared/data folder)")
    return root


TINY_MODEL = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
              "model.intermediate_size=64", "model.vocab_size=320"]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that make a pretrain run take seconds."""
    return TINY_MODEL + ["data.n_train_per_task=300", "data.n_test_per_task=20", "data.tasks=[arithmetic]",
                         "data.difficulty={arithmetic: [2]}", "trainer.steps=20", "trainer.batch_size=8",
                         "trainer.warmup_steps=2", "trainer.eval_every=10", "trainer.eval_batches=1",
                         "trainer.checkpoint_every=10", "trainer.log_every=5", "trainer.threads=1",
                         "eval.n_per_task=8", "eval.max_new_tokens=12"]
