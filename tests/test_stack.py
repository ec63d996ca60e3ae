"""`semirec stack up`: addresses, health, clean shutdown, no orphans, clear errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from semirec.core.stack import StackError, _wait
from tests.process_utils import Job, descendants, wait_gone

KEYS = {"kafka", "redis", "triton_grpc", "triton_http", "triton_metrics"}


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "semirec", "stack", "up", "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def test_stack_up_serves_all_and_stops_cleanly(tmp_path: Path) -> None:
    proc, addrs = start(tmp_path)
    try:
        assert set(addrs) == KEYS
        host, port = addrs["kafka"].split(":")
        socket.create_connection((host, int(port)), timeout=2).close()
        assert redis.Redis.from_url(addrs["redis"]).ping()
        with urllib.request.urlopen(f"http://{addrs['triton_http']}/v2/health/ready") as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://{addrs['triton_metrics']}/metrics") as r:
            assert b"nv_" in r.read()
        kids = children(proc.pid)
        assert len(kids) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not [k for k in kids if alive(k)]
    assert not list(tmp_path.glob("semirec-stack-*")), "temp dir left behind"


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    proc, _ = start(tmp_path, "--without", "triton")
    kids = children(proc.pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if alive(k)]


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    res = subprocess.run([sys.executable, "-m", "semirec", "stack", "up", "--without", "triton"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "redis-server is not on PATH" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_port_that_never_opens_is_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("listening soon, honest\n")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(StackError, match=r"(?s)not healthy after 1s.*listening soon"):
            _wait("thing", lambda: False, sleeper, log, timeout=1)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_ctrl_c_stops_every_part_in_order(tmp_path: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the foreground group) reaches only `semirec stack up`,
    which stops Triton, redis and the broker in that order, one line each, no traceback."""
    job = Job(["stack", "up", "--json"], {**os.environ, "TMPDIR": str(tmp_path)})
    try:
        addrs = json.loads(job.wait_for(r"^\{", job.out, timeout=120))
        kids = descendants(job.proc.pid)  # tansu, redis-server, tritonserver (+ its python stubs)
        pgids = {job.proc.pid, *kids}  # each service leads its own group
        assert len(children(job.proc.pid)) == 3
        # ready means every advertised endpoint answers, metrics included
        with urllib.request.urlopen(f"http://{addrs['triton_metrics']}/metrics") as r:
            assert r.status == 200
    except BaseException:
        job.kill()
        raise
    seconds = job.ctrl_c(timeout=10)
    assert job.proc.returncode == 0, job.text
    assert seconds < 10
    assert "Traceback" not in job.text
    stopped = [ln.split(" (")[0] for ln in job.err if ln.startswith("stopped ")]
    assert stopped == ["stopped tritonserver", "stopped redis-server", "stopped Tansu broker"], job.text
    assert not wait_gone(pgids), "processes left behind"
    assert not [k for k in kids if alive(k)]
    assert not list(tmp_path.glob("semirec-stack-*")), "temp dir left behind"


def test_stack_up_scale_out_flags(tmp_path: Path) -> None:
    """`--redis-cluster --partitions 3 --tritons 2`: a 3-master cluster with a replica each,
    every semirec topic with 3 partitions (exported), two tritonservers listed; Ctrl-C stops
    all of it, the cluster's nodes included, in order."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    from semirec.core.redis_client import sync_redis_client
    from semirec.core.settings import Topics

    job = Job(["stack", "up", "--json", "--redis-cluster", "--partitions", "3", "--tritons", "2"],
              {**os.environ, "TMPDIR": str(tmp_path)})
    try:
        addrs = json.loads(job.wait_for(r"^\{", job.out, timeout=180))
        kids = descendants(job.proc.pid)
        assert addrs["redis"].startswith("redis+cluster://") and addrs["event_partitions"] == 3
        grpc, metrics = addrs["triton_grpc"].split(","), addrs["triton_metrics"].split(",")
        assert len(grpc) == len(set(grpc)) == 2 and len(metrics) == 2
        for m in metrics:
            with urllib.request.urlopen(f"http://{m}/metrics") as r:
                assert r.status == 200
        client = sync_redis_client(addrs["redis"])
        deadline = time.monotonic() + 20  # the replicas' roles spread by gossip
        while True:
            nodes = client.cluster_nodes()
            roles = sorted("master" if "master" in n["flags"] else "slave" for n in nodes.values())
            if roles == ["master"] * 3 + ["slave"] * 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert roles == ["master"] * 3 + ["slave"] * 3, nodes
        assert client.cluster_info()["cluster_state"] == "ok"
        client.close()

        async def counts() -> dict[str, int]:
            admin = AIOKafkaAdminClient(bootstrap_servers=addrs["kafka"])
            await admin.start()
            try:
                return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
            finally:
                await admin.close()

        got = asyncio.run(counts())
        names = [getattr(Topics(), f) for f in Topics.__dataclass_fields__]
        assert {n: got.get(n) for n in names} == {n: 1 if n == "model-updates" else 3 for n in names}
        # the cluster's 6 nodes, 2 tritonservers and the broker
        assert len(children(job.proc.pid)) == 9
    except BaseException:
        job.kill()
        raise
    job.ctrl_c(timeout=20)
    assert job.proc.returncode == 0, job.text
    stopped = [ln.split(" (")[0] for ln in job.err if ln.startswith("stopped ")]
    assert stopped == ["stopped tritonserver 2", "stopped tritonserver",
                       "stopped Redis Cluster", "stopped Tansu broker"], job.text
    assert not [k for k in kids if alive(k)]
    assert not list(tmp_path.glob("semirec-stack-*")), "temp dir left behind"
