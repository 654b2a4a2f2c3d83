"""executor=ray on a running cluster (issue 23.6): joining by RAY_ADDRESS / ray_address instead of starting a local
Ray, and a real two-node local cluster (``ray start --head`` + a second ``ray start --address``) running a recipe
whose inputs and outputs are fsspec ``file://`` URLs (shared storage as every node sees it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is part of the test install (pip install 'ray[data]')")

from refinery.errors import ConfigError  # noqa: E402

RAY = Path(sys.executable).with_name("ray")
# No token authentication (ray start's default now, with a token in ~/.ray shared by every user of the machine).
_ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}


def test_ray_address_joins_instead_of_starting(monkeypatch):
    """RAY_ADDRESS (or ray_address) → ``ray.init(address=...)`` without num_cpus (which raises on a cluster); no
    address → a local instance with ``workers`` CPUs; a cluster that cannot be reached is one clear error."""
    from refinery.data import pipeline

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert pipeline.ray_init(4) is True
    assert calls[-1]["address"] == "10.0.0.5:6379" and "num_cpus" not in calls[-1]
    assert pipeline.ray_init(4, "ray://head:10001") is True and calls[-1]["address"] == "ray://head:10001"
    monkeypatch.delenv("RAY_ADDRESS")
    assert pipeline.ray_init(3) is False and calls[-1]["num_cpus"] == 3 and "address" not in calls[-1]

    def refuse(**kw):
        raise ConnectionError("could not connect to GCS")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(ConfigError, match=r"cannot join the Ray cluster at 'auto'.*RAY_ADDRESS"):
        pipeline.ray_init(2, "auto")


def test_recipe_takes_ray_address():
    from refinery.config import load_config
    from refinery.data.math_web.pipeline import MathCCConfig

    cfg = load_config(MathCCConfig, None, ["executor=ray", "ray_address=ray://head:10001", "shard_bytes=1024",
                                           "stages=[extract]"])
    assert cfg.ray_address == "ray://head:10001" and cfg.shard_bytes == 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_nodes(address: str, n: int, timeout: float = 300) -> None:
    code = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))")
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120,
                           env=_ENV)
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(5)
    raise RuntimeError(f"the local Ray cluster did not reach {n} nodes: {r.stderr[-2000:]}")


@pytest.fixture
def ray_cluster(tmp_path_factory):
    """A head node and a second worker node, 1 CPU each, on free ports, each a ``ray start --block`` process in
    its own process group, which teardown stops (only these processes: never ``ray stop``)."""
    tmp = Path("/tmp") / f"rfy{os.getpid()}"  # Ray's socket paths must stay short
    port = _free_port()
    address = f"127.0.0.2:{port}"  # Ray rewrites 127.0.0.1 to the machine's address, which may not be reachable
    def common() -> list[str]:  # each node's agents on ports of their own
        return ["--num-cpus=1", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.2",
                f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]

    env = {**_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
    procs = [subprocess.Popen([str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false",
                               f"--ray-client-server-port={_free_port()}", f"--temp-dir={tmp}", *common()],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_nodes(address, 1)
        procs.append(subprocess.Popen([str(RAY), "start", f"--address={address}", *common()], env=env,
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_nodes(address, 2)
        yield address
    finally:
        for p in reversed(procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                    p.wait(timeout=30)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        subprocess.run(["rm", "-rf", str(tmp)])


@pytest.mark.slow
def test_recipe_on_a_two_node_cluster_through_fsspec(ray_cluster, tmp_path):
    """The CLI with RAY_ADDRESS set joins the two-node cluster (no local Ray), input and output are file:// URLs,
    and the output equals a local run's on plain paths (a global dedup stage included)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_streaming import write_warc

    from refinery.data.pipeline import output_records

    inp = tmp_path / "in"
    inp.mkdir()
    write_warc(inp / "a.warc.gz", 24)
    write_warc(inp / "b.warc", 6)  # repeats a's first pages: dedup drops them
    args = ["stages=[extract,dedup_exact]", "extract.renderer=python", "extract.min_chars=0", "shard_bytes=600"]
    cli = [sys.executable, "-m", "refinery.cli", "data", "run", "recipes/nemotron_cc_math.yaml"]
    root = Path(__file__).resolve().parents[2]
    env = _ENV
    local = subprocess.run([*cli, f"input=[{inp}]", f"output={tmp_path / 'local'}", "workers=1", *args],
                           cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    t0 = time.time()
    run = subprocess.run([*cli, f"input=[file://{inp}]", f"output=file://{tmp_path / 'ray'}", "executor=ray", *args],
                         cwd=root, env={**env, "RAY_ADDRESS": ray_cluster}, capture_output=True, text=True,
                         timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads((tmp_path / "ray" / "stats.json").read_text())
    print(f"two-node run: {stats['shards']} shards in {time.time() - t0:.1f} s on {stats['ray_nodes']} node(s)")
    assert stats["executor"] == "ray" and stats["shards"] > 10 and stats["ray_nodes"] >= 1
    assert stats["records_out"] == 24
    # Both nodes take work: Ray reuses the head's warm worker for shards this short (~0.1 s), so the spread is
    # checked with tasks long enough to need the second node.
    spread = ("import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False)\n"
              "f = ray.remote(num_cpus=1, scheduling_strategy='SPREAD')(lambda: (time.sleep(2), "
              "ray.get_runtime_context().get_node_id())[1])\n"
              "print(len(set(ray.get([f.remote() for _ in range(6)]))))")
    d = subprocess.run([sys.executable, "-c", spread, ray_cluster], env=env, capture_output=True, text=True,
                       timeout=200)
    assert d.stdout.strip().splitlines()[-1:] == ["2"], d.stderr[-2000:]
    strip = [{k: v for k, v in r.items() if k != "source"} for r in output_records(tmp_path / "ray")]
    want = [{k: v for k, v in r.items() if k != "source"} for r in output_records(tmp_path / "local")]
    assert strip == want
    assert (tmp_path / "ray" / "duplicates" / "exact_clusters.jsonl").exists()
