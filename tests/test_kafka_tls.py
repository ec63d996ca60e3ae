"""Kafka over TLS end to end, with a real handshake: the Tansu broker behind a TLS-terminating
proxy (tests/tls_proxy.py) that demands a client certificate, advertised at the proxy's port,
so every connection (bootstrap and metadata-advertised) is TLS. SEMIREC_KAFKA_SECURITY_PROTOCOL
=SSL with SEMIREC_KAFKA_SSL_CAFILE/CERTFILE/KEYFILE through `semirec produce`, a real ingest
worker (faust), `semirec lag`; an untrusted broker certificate and a missing client certificate
are one line each. SASL is not tested: no broker here accepts it (docs/reliability.md)."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from semirec.core.faults import EXIT_CONFIG
from semirec.core.settings import KafkaSecurity, Settings
from semirec.core.stack import free_ports, tansu_binary
from tests.conftest import settings_env
from tests.event_script import scripted_events
from tests.test_faults import _openssl, cli
from tests.tls_proxy import TlsProxy

pytestmark = pytest.mark.fault


def _certs(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a second CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=semirec-test-{ca}", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=semirec-{name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext, cwd=d)


@pytest.fixture(scope="module")
def kafka_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, TlsProxy]]:
    """``host:port`` of the TLS listener, the certificate folder, the proxy."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("kafka-tls")
    _certs(d)
    broker, public = free_ports(2)
    proc = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{broker}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{public}",
         "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / "ca.pem"))
    context.load_cert_chain(d / "server.pem", d / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the client certificate is checked
    proxy = TlsProxy(public, broker, context).start()
    yield f"127.0.0.1:{public}", d, proxy
    proxy.stop()
    proc.terminate()
    proc.wait(10)


def tls_settings(settings: Settings, address: str, d: Path, *, ca: str = "ca.pem",
                 client: bool = True) -> Settings:
    return replace(settings, kafka=address, security=KafkaSecurity(
        protocol="SSL", ssl_cafile=str(d / ca),
        ssl_certfile=str(d / "client.pem") if client else None,
        ssl_keyfile=str(d / "client.key") if client else None))


def tls_env(s: Settings) -> dict[str, str]:
    env = settings_env(s)
    sec = s.security
    env.update({"SEMIREC_KAFKA_SECURITY_PROTOCOL": sec.protocol,
                "SEMIREC_KAFKA_SSL_CAFILE": sec.ssl_cafile or ""})
    for name, value in (("CERTFILE", sec.ssl_certfile), ("KEYFILE", sec.ssl_keyfile)):
        if value:
            env[f"SEMIREC_KAFKA_SSL_{name}"] = value
    return env


async def test_kafka_over_mutual_tls_end_to_end(settings, redis_client, kafka_tls,
                                                tmp_path) -> None:
    from semirec.core.sequences import replay
    from tests.kafka_utils import wait_committed
    from tests.test_ingest import comparable, stored_states

    address, d, proxy = kafka_tls
    tls = tls_settings(settings, address, d)
    events = scripted_events(users=5, per_user=30)
    lines = "\n".join(json.dumps(e.to_dict()) for e in events) + "\n"
    res = subprocess.run([*cli_argv(), "produce", "-"], input=lines, text=True,
                         capture_output=True, env=tls_env(tls), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    before = proxy.handshakes
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*cli_argv(), "worker", "--agent", "ingest"], env=tls_env(tls),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await wait_committed(tls, len(events), proc=proc, timeout=120)
    finally:
        from tests.workers import stop

        assert stop(proc) == 0, log.read_text()[-3000:]
    assert proxy.handshakes > before  # the worker (faust) connected through TLS
    want = {u: s for u, s in replay(events).items() if s.video or s.product}
    assert comparable(await stored_states(tls)) == comparable(want)
    lag = cli(tls_env(tls), "lag", "--json", "--group", tls.consumer_group)
    assert lag.returncode == 0, lag.stderr
    assert json.loads(lag.stdout)["total_lag"] == 0


def test_untrusted_broker_or_missing_client_certificate_is_one_line(settings, kafka_tls) -> None:
    address, d, _ = kafka_tls
    untrusted = tls_env(tls_settings(settings, address, d, ca="other-ca.pem"))
    res = cli(untrusted, "lag", "--topic", "events")
    assert res.returncode == EXIT_CONFIG, res.stderr
    assert res.stderr.count("\n") == 1 and "TLS" in res.stderr and "certificate" in res.stderr
    started = time.monotonic()
    anonymous = tls_env(tls_settings(settings, address, d, client=False))
    res = cli(anonymous, "lag", "--topic", "events")
    assert res.returncode == EXIT_CONFIG and res.stderr.count("\n") == 1, res.stderr
    # a Java broker sends the alert "certificate required"; the proxy just closes
    assert "client certificate" in res.stderr and "SEMIREC_KAFKA_SSL_" in res.stderr
    assert time.monotonic() - started < 60


def cli_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "semirec"]

