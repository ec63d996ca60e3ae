"""Faults of the environment on the real stack: one clear line, the right exit code, a prompt
SIGTERM, nothing committed that was not written (``pytest -m fault`` runs them alone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import settings as settings_h

from benchmarks.fuzz import event_message, item_body, request_message, sample_message
from semirec.core.contracts import MAX_TS, ContractError, encode_event, parse_event
from semirec.core.faults import EXIT_AUTH, EXIT_CONFIG, EXIT_UNAVAILABLE
from semirec.core.items import validate_item
from semirec.core.stack import free_port, redis_binary
from tests.conftest import settings_env
from tests.event_script import encode, scripted_events
from tests.kafka_utils import committed, produce_raw
from tests.workers import start_worker, stop

pytestmark = pytest.mark.fault
PASSWORD = "s3cret-not-in-logs"


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server with ``requirepass``; yields its address without credentials."""
    port = free_port()
    data = tmp_path_factory.mktemp("redis-auth")
    proc = subprocess.Popen([str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(data),
                             "--requirepass", PASSWORD], stdout=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semirec", *argv], text=True,
                          capture_output=True, env=env, timeout=60, stdin=subprocess.DEVNULL)


def bad_environments(settings, redis_auth: str) -> dict[str, tuple[dict[str, str], int, str]]:
    """name -> (environment changes, exit code, text the one line must contain)."""
    return {
        "redis closed port": ({"SEMIREC_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"},
                              EXIT_UNAVAILABLE, "cannot reach Redis at redis://127.0.0.1:"),
        "redis http url": ({"SEMIREC_REDIS_URL": "http://127.0.0.1:1/0"}, EXIT_CONFIG,
                           "SEMIREC_REDIS_URL"),
        "redis bad port": ({"SEMIREC_REDIS_URL": "redis://127.0.0.1:99999/0"}, EXIT_CONFIG,
                           "Port out of range"),
        "redis wrong password": ({"SEMIREC_REDIS_URL": f"redis://:wrong@{redis_auth}/0"},
                                 EXIT_AUTH, "refused the credentials"),
        "redis no password": ({"SEMIREC_REDIS_URL": f"redis://{redis_auth}/0"}, EXIT_AUTH,
                              "SEMIREC_REDIS_URL"),
        "kafka closed port": ({"SEMIREC_KAFKA": f"127.0.0.1:{closed_port()}"}, EXIT_UNAVAILABLE,
                              "cannot reach Kafka at 127.0.0.1:"),
        "kafka no port": ({"SEMIREC_KAFKA": "localhost"}, EXIT_CONFIG, "SEMIREC_KAFKA"),
    }


VERBS = {  # verb -> which of the bad environments it meets (it talks to Redis, Kafka or both)
    ("user", "u1", "--json"): ("redis", "kafka no port"),
    ("user", "u1"): ("redis",),
    ("lag",): ("kafka",),
    ("lag", "--json"): ("kafka",),
    ("produce", "-"): ("kafka",),
    ("worker",): ("kafka", "redis http url", "redis bad port"),
}


def cases() -> list[tuple[tuple[str, ...], str]]:
    names = ["redis closed port", "redis http url", "redis bad port", "redis wrong password",
             "redis no password", "kafka closed port", "kafka no port"]
    out = []
    for argv, wanted in VERBS.items():
        out += [(argv, n) for n in names if any(n.startswith(w) or n == w for w in wanted)]
    return out


@pytest.mark.parametrize(("argv", "case"), cases(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_every_verb_fails_in_one_line_with_a_distinct_code(settings, redis_with_password,
                                                           argv, case) -> None:
    change, code, text = bad_environments(settings, redis_with_password)[case]
    env = {**settings_env(settings), **change}
    started = time.monotonic()
    res = cli(env, *argv)
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], res.stderr
    assert PASSWORD not in res.stderr and "wrong" not in res.stderr  # no secret in the line
    assert time.monotonic() - started < 30
    verbose = cli(env, "-v", *argv)
    assert verbose.returncode == code and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == lines[0]


def worker_env(settings, **extra: str) -> dict[str, str]:
    return {**settings_env(settings), **extra}


async def _produce(settings, n_users: int = 5, per_user: int = 20) -> dict[int, int]:
    return await produce_raw(settings, encode(scripted_events(users=n_users, per_user=per_user)))


async def test_sigterm_stops_a_worker_stuck_on_a_redis_outage(settings, tmp_path) -> None:
    """Redis on a closed port: the batch can never be written. SIGTERM still stops the worker
    within seconds, and nothing is committed."""
    port = closed_port()
    await _produce(settings)
    log = tmp_path / "worker.log"
    metrics_port = free_port()
    proc = start_worker(replace(settings, redis_url=f"redis://127.0.0.1:{port}/0"), log,
                        "--agent", "ingest", "--metrics-port", str(metrics_port))
    try:
        await _wait_for_log(log, "retrying in", proc)
        readyz = _get(f"http://127.0.0.1:{metrics_port}/readyz")
        assert readyz["ready"] is False and "cannot reach Redis" in readyz["outages"]["redis"]
        metrics = _get(f"http://127.0.0.1:{metrics_port}/metrics", raw=True)
        assert 'semirec_dependency_up{dependency="redis"} 0.0' in metrics
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        assert time.monotonic() - started < 5, log.read_text()[-2000:]
        assert proc.returncode == 0
    finally:
        stop(proc, signal.SIGKILL)
    assert await committed(settings, settings.consumer_group, settings.topics.events,
                           settings.event_partitions) == {}


async def test_wrong_redis_password_is_fatal_not_an_outage(settings, redis_with_password,
                                                           tmp_path) -> None:
    await _produce(settings)
    log = tmp_path / "worker.log"
    proc = start_worker(replace(settings, redis_url=f"redis://:wrong@{redis_with_password}/0"),
                        log, "--agent", "ingest")
    try:
        assert proc.wait(60) == EXIT_AUTH
    finally:
        stop(proc, signal.SIGKILL)
    text = log.read_text()
    assert text.strip().splitlines()[-1].startswith("Error: Redis at redis://:***@")
    assert "retrying" not in text and PASSWORD not in text and ":wrong@" not in text
    assert await committed(settings, settings.consumer_group, settings.topics.events,
                           settings.event_partitions) == {}


async def test_redis_with_requirepass_works_end_to_end(settings, redis_with_password,
                                                       tmp_path) -> None:
    from tests.kafka_utils import wait_committed
    from tests.test_ingest import comparable, stored_states

    events = scripted_events(users=6, per_user=40)
    ends = await produce_raw(settings, encode(events))
    authed = replace(settings, redis_url=f"redis://:{PASSWORD}@{redis_with_password}/0")
    redis.Redis.from_url(authed.redis_url).flushdb()
    log = tmp_path / "worker.log"
    proc = start_worker(authed, log, "--agent", "ingest")
    try:
        await wait_committed(settings, ends, proc=proc)
    finally:
        assert stop(proc) == 0
    from semirec.core.sequences import replay

    want = {u: s for u, s in replay(events).items() if s.video or s.product}
    assert comparable(await stored_states(authed)) == comparable(want)
    assert PASSWORD not in log.read_text()


async def _wait_for_log(log: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the log after {timeout}s")


def _get(url: str, raw: bool = False):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
    except urllib.error.HTTPError as exc:  # 503 when not ready
        body = exc.read().decode()
    return body if raw else json.loads(body)


# -- the fault suite's scenarios at small loads (benchmarks/faults.py runs them at full size) ---

@pytest.mark.parametrize(("name", "n"), [("kill9-worker", 3000), ("redis-restart", 2000),
                                         ("redis-kill9", 2000), ("fuzz-events", 400),
                                         ("triton-restart", 5), ("fuzz-requests", 300),
                                         ("fuzz-samples", 300)])
async def test_fault_scenario_leaves_exact_state(settings, redis_client, tmp_path, name, n) -> None:
    from benchmarks.faults import SCENARIOS

    row = await SCENARIOS[name](settings, n, tmp_path)
    assert row.exact, row
    assert row.users_wrong == row.lost == row.extra == 0


@settings_h(max_examples=300, deadline=None)
@given(event_message())
def test_fuzzed_events_are_accepted_or_refused_with_a_reason(message) -> None:
    """Whatever arrives, the contract answers with an Event or a ContractError, never anything
    else (an agent would crash on it); accepted events survive a re-encoding unchanged."""
    key, value = message
    try:
        event = parse_event(value, key)
    except ContractError as exc:
        assert exc.reason.value and str(exc)
        return
    for fmt in ("json", "msgpack"):
        assert parse_event(encode_event(event, fmt), key) == event


@settings_h(max_examples=300, deadline=None)
@given(request_message())
def test_fuzzed_requests_are_accepted_or_refused_with_a_reason(message) -> None:
    from semirec.core.recommendations import encode as encode_request
    from semirec.core.recommendations import parse_request

    key, value = message
    try:
        req = parse_request(value, key)
    except ContractError as exc:
        assert exc.reason.value and str(exc)
        return
    assert parse_request(encode_request(req), key) == req
    assert req.at is None or 0 <= req.at < MAX_TS  # finite: hour buckets are computed


@settings_h(max_examples=200, deadline=None)
@given(sample_message())
def test_fuzzed_samples_are_accepted_or_refused_with_a_reason(message) -> None:
    from semirec.core.samples import decode_sample, encode_sample

    key, value = message
    try:
        sample = decode_sample(value, key, check_key=True)
    except ContractError as exc:
        assert exc.reason.value and str(exc)
        return
    assert decode_sample(encode_sample(sample), key, check_key=True) == sample


@settings_h(max_examples=300, deadline=None)
@given(item_body())
def test_fuzzed_items_are_accepted_or_refused_with_a_reason(body) -> None:
    try:
        item = validate_item(body)
    except ContractError as exc:
        assert exc.reason.value and str(exc)
        return
    assert validate_item(item.to_dict()) == item


# -- Redis over TLS ---------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """redis-server with TLS only (a throwaway CA and a certificate for 127.0.0.1);
    yields ``host:port`` and the CA file."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("redis-tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=semirec-test-ca", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    port = free_port()
    proc = subprocess.Popen([str(redis_binary()), "--port", "0", "--tls-port", str(port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(d), "--tls-cert-file", "server.pem",
                             "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem",
                             "--tls-auth-clients", "no"], cwd=d, stdout=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(d / "ca.pem"))
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "redis TLS did not start"
            time.sleep(0.05)
    yield f"127.0.0.1:{port}", d / "ca.pem"
    proc.terminate()
    proc.wait(10)


async def test_redis_over_tls_end_to_end_and_an_untrusted_certificate(settings, redis_tls,
                                                                     tmp_path) -> None:
    from semirec.core.sequences import replay
    from tests.kafka_utils import wait_committed
    from tests.test_ingest import comparable, stored_states

    address, ca = redis_tls
    tls = replace(settings, redis_url=f"rediss://{address}/0?ssl_ca_certs={ca}")
    redis.Redis.from_url(tls.redis_url).flushdb()
    events = scripted_events(users=5, per_user=30)
    ends = await produce_raw(settings, encode(events))
    proc = start_worker(tls, tmp_path / "worker.log", "--agent", "ingest")
    try:
        await wait_committed(settings, ends, proc=proc)
    finally:
        assert stop(proc) == 0
    want = {u: s for u, s in replay(events).items() if s.video or s.product}
    assert comparable(await stored_states(tls)) == comparable(want)
    some_user = next(iter(want))
    res = cli(settings_env(tls), "user", some_user, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["found"] is True

    untrusted = settings_env(replace(settings, redis_url=f"rediss://{address}/0"))
    res = cli(untrusted, "user", some_user)
    assert res.returncode == EXIT_CONFIG, res.stderr
    assert res.stderr.count("\n") == 1 and "TLS with Redis at rediss://" in res.stderr
