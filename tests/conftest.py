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


@pytest.fixture(scope="session")
def family_ckpt(tmp_path_factory):
    """Factory ``family_ckpt(arch, size="tiny", template=None) -> Path``: a random-init checkpoint of a real
    family (refinery.models.families.ARCHS) with its chat template, built once per session."""
    from refinery.models.families import init_checkpoint

    root = tmp_path_factory.mktemp("families")
    built: dict[tuple, Path] = {}

    def make(arch: str, size: str = "tiny", template: str | None = None) -> Path:
        key = (arch, size, template)
        if key not in built:
            built[key] = init_checkpoint(arch, size, root / "-".join(k for k in key if k), seed=0, template=template)
        return built[key]

    return make


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def alphabet_model(tmp_path_factory) -> Path:
    """A tiny model trained (seconds) on the repeated alphabet: greedy after 'a b c' continues ' d e f ...'."""
    from refinery.config import load_config
    from refinery.models.pretrain import PretrainConfig, pretrain
    from refinery.runs import RunDir

    root = tmp_path_factory.mktemp("alphabet")
    text = root / "abc.txt"
    text.write_text(" ".join("abcdefghijklmnopqrstuvwxyz") * 300)
    cfg = load_config(PretrainConfig, None, TINY_MODEL + [
        "data.source=text", f"data.text_files=[{text}]", "data.seq_len=48", "trainer.steps=120",
        "trainer.batch_size=16", "trainer.lr=1e-2", "trainer.warmup_steps=5", "trainer.eval_every=120",
        "trainer.checkpoint_every=120", "trainer.threads=2", "model.max_position_embeddings=128"])
    run = RunDir.create(cfg, "abc", out=root / "run")
    pretrain(cfg, run, progress=False)
    return run.path / "model"


class Server:
    """A real `refinery serve` subprocess on a loopback port."""

    def __init__(self, model_dir: Path, port: int | None = None, name: str = "tiny"):
        self.model_dir, self.port, self.name = model_dir, port or free_port(), name
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = None

    def start(self, wait: bool = True) -> Server:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refinery.cli", "serve", str(self.model_dir), "--port", str(self.port),
             "--model-name", self.name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait:
            self.wait()
        return self

    def wait(self, timeout: float = 60) -> None:
        import time

        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server(alphabet_model):
    srv = Server(alphabet_model).start()
    yield srv
    srv.kill()
