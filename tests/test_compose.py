"""The production stack files: docker-compose.yml, Dockerfile, Prometheus config and alert rules,
Grafana provisioning and dashboard. Schema checks always; `docker compose config` and promtool
where they are installed; Triton metric names against the real tritonserver."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from semirec.cli import VERBS, cli
from semirec.core.lag import LAG_METRICS
from semirec.core.metrics import metric_names
from semirec.core.settings import Settings, Topics
from semirec.core.urls import cluster_seeds, is_cluster_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "monitoring" / "prometheus"
GRAFANA = ROOT / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "semirec.json"
OPERATIONS = ROOT / "docs" / "operations.md"
SECRETS = {"REDIS_PASSWORD": "redis-pw", "GRAFANA_ADMIN_PASSWORD": "grafana-pw",
           "KAFKA_CLIENT_PASSWORD": "kafka-pw"}
KAFKA = ("kafka-1", "kafka-2", "kafka-3")
REDIS = tuple(f"redis-{n}" for n in range(1, 7))
TRITONS = ("triton-1", "triton-2")
SERVICES = {*KAFKA, *REDIS, "redis-cluster", *TRITONS, "ingest", "catalog", "recommend",
            "lag-exporter", "lag-exporter-catalog", "trainer", "prometheus", "grafana"}
WORKERS = ("ingest", "catalog", "recommend", "trainer")
# Triton metrics the dashboard may use (checked against a real tritonserver below).
TRITON_METRICS = {"nv_inference_request_success", "nv_inference_request_failure",
                  "nv_inference_count", "nv_inference_exec_count",
                  "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                  "nv_inference_compute_input_duration_us",
                  "nv_inference_compute_infer_duration_us",
                  "nv_inference_compute_output_duration_us", "nv_cpu_utilization",
                  "nv_cpu_memory_used_bytes"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "topk", "bottomk", "quantile", "rate",
    "irate", "increase", "delta", "deriv", "histogram_quantile", "absent", "and", "or", "unless",
    "bool", "offset", "abs", "clamp_min", "clamp_max", "time", "vector", "scalar", "label_values",
}
SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "env_file", "ports",
                "volumes", "depends_on", "healthcheck", "restart", "deploy", "shm_size",
                "stop_grace_period", "user", "ulimits", "networks", "labels", "logging"}
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${X}, ${X:-default}, ${X:?error}; $$ is a literal $."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        missing = value is None or (value == "" and op and op.startswith(":"))
        if op and op.endswith("?") and missing:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return value or ""

    return _VAR.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), SECRETS if env is None else env))


def metrics_in(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (Grafana variables allowed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {t for t in re.findall(r"(?<![\w.$])[a-zA-Z_:][\w:]*", expr)} - PROMQL_WORDS


def known_metrics() -> set[str]:
    import semirec.serving.metrics
    import semirec.trainer.online.metrics  # noqa: F401  (and the incremental trainer's)

    return metric_names() | set(LAG_METRICS) | {"up"}


def anchors(markdown: Path) -> set[str]:
    """GitHub-style anchors of a document's headings."""
    out, fenced = set(), False
    for line in markdown.read_text().splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def service_command(service: dict[str, Any]) -> list[str]:
    return [str(c) for c in service["command"]]


# -- docker-compose.yml --------------------------------------------------------------------

def test_compose_needs_every_secret_from_the_environment() -> None:
    raw = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", raw))
    assert required == set(SECRETS)
    example = (ROOT / ".env.example").read_text()
    for name in required:
        assert re.search(rf"^{name}=$", example, re.M), f"{name} missing from .env.example"
        with pytest.raises(KeyError, match=name):
            compose({k: v for k, v in SECRETS.items() if k != name})
    # nothing secret is written in the file itself
    for service in yaml.safe_load(raw.replace("$$", "$"))["services"].values():
        env = service.get("environment") or {}
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert "${" in str(value), f"{key} has a literal value"
    config = compose()
    assert config["services"]["ingest"]["environment"]["SEMIREC_REDIS_URL"] == (
        "redis+cluster://:redis-pw@redis-1:6379,redis-2:6379,redis-3:6379")
    for node in REDIS:
        command = " ".join(config["services"][node]["command"])
        assert '--requirepass "$REDIS_PASSWORD"' in command and '--masterauth "$REDIS_PASSWORD"' in command
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored


def test_compose_schema() -> None:
    config = compose()
    assert set(config) <= {"name", "services", "volumes", "networks"} | {
        k for k in config if k.startswith("x-")}
    services = config["services"]
    assert set(services) == SERVICES
    declared_volumes = set(config.get("volumes") or {})
    for name, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: unknown keys {set(svc) - SERVICE_KEYS}"
        assert svc.get("image"), name
        assert svc.get("restart") == "unless-stopped", name
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        for net in svc.get("networks") or {}:
            assert net in (config.get("networks") or {}), f"{name}: undeclared network {net}"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] == "service_healthy" and "healthcheck" in services[dep]
        for port in svc.get("ports") or []:
            assert re.fullmatch(r"(\d+\.\d+\.\d+\.\d+:)?\d+:\d+", port), f"{name}: port {port}"
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: undeclared volume {source}"


def test_compose_kafka_is_a_three_node_kraft_cluster() -> None:
    services = compose()["services"]
    envs = [services[name]["environment"] for name in KAFKA]
    voters = ",".join(f"{n}@{name}:9093" for n, name in enumerate(KAFKA, 1))
    external = []
    for n, (name, env) in enumerate(zip(KAFKA, envs, strict=True), 1):
        kafka = services[name]
        assert kafka["image"].startswith("apache/kafka:")
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert int(env["KAFKA_NODE_ID"]) == n and env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert env["CLUSTER_ID"] == envs[0]["CLUSTER_ID"]
        assert not any("ZOOKEEPER" in k for k in env)
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        jaas = env["KAFKA_LISTENER_NAME_EXTERNAL_PLAIN_SASL_JAAS_CONFIG"]
        assert 'user_semirec-producer="kafka-pw"' in jaas
        for key in ("KAFKA_DEFAULT_REPLICATION_FACTOR", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
            assert int(env[key]) == len(KAFKA), (name, key)
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == int(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2
        advertised = dict(a.split("://") for a in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        assert advertised["INTERNAL"] == f"{name}:9092"
        (port,) = kafka["ports"]
        assert port.rsplit(":", 2)[1] == advertised["EXTERNAL"].rsplit(":", 1)[1]  # host port
        external.append(advertised["EXTERNAL"])
        assert kafka["volumes"] == [f"{name}-data:/var/lib/kafka/data"]
    assert len(set(external)) == len(KAFKA)
    settings = Settings.from_env({k: str(v) for k, v in services["ingest"]["environment"].items()})
    assert settings.kafka == ",".join(f"{name}:9092" for name in KAFKA)
    assert settings.topic_replication == len(KAFKA)


def test_compose_redis_is_a_cluster_with_fixed_addresses() -> None:
    config = compose()
    services = config["services"]
    (net,) = config["networks"]["default"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(net["subnet"]), ipaddress.ip_network(net["ip_range"])
    addresses = set()
    for name in REDIS:
        node = services[name]
        command = " ".join(node["command"])
        for flag in ("--cluster-enabled yes", "--appendonly yes", "--maxmemory-policy noeviction",
                     '--cluster-announce-hostname "$REDIS_NODE"', "--cluster-config-file /data/"):
            assert flag in command, (name, flag)
        assert node["environment"]["REDIS_NODE"] == name
        assert node["volumes"] == [f"{name}-data:/data"]
        address = ipaddress.ip_address(node["networks"]["default"]["ipv4_address"])
        assert address in subnet and address not in dynamic, name  # never handed to another
        addresses.add(address)
    assert len(addresses) == len(REDIS)
    keeper = services["redis-cluster"]
    assert keeper["environment"]["REDIS_NODES"].split() == list(REDIS)
    script = "\n".join(keeper["command"])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    assert "cluster_state:ok" in " ".join(keeper["healthcheck"]["test"])
    assert set(keeper["depends_on"]) == set(REDIS)
    url = services["ingest"]["environment"]["SEMIREC_REDIS_URL"]
    assert is_cluster_url(url)
    assert {host for host, _ in cluster_seeds(url)} <= set(REDIS)
    for worker in WORKERS:
        assert services[worker]["depends_on"]["redis-cluster"]["condition"] == "service_healthy"


def test_compose_two_tritons_share_one_repository() -> None:
    services = compose()["services"]
    grpc = []
    devices = []
    for name in TRITONS:
        triton = services[name]
        assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", triton["image"])
        assert "./triton_models:/models:ro" in triton["volumes"]
        assert "--model-repository=/models" in triton["command"]
        (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        devices.append(tuple(device["device_ids"]))
        port = next(c for c in triton["command"] if c.startswith("--grpc-port="))
        grpc.append(f"{name}:{port.split('=')[1]}")
    assert len(set(devices)) == len(TRITONS)  # one GPU each by default
    for worker in ("ingest", "catalog", "recommend", "trainer"):
        assert services[worker]["environment"]["SEMIREC_TRITON_GRPC"] == ",".join(grpc)
    assert {t: {"condition": "service_healthy"} for t in TRITONS}.items() <= (
        services["trainer"]["depends_on"].items())
    # the trainer writes the repository the Tritons read
    assert "./triton_models:/app/triton_models" in services["trainer"]["volumes"]


def test_compose_semirec_services_run_real_commands_with_valid_settings() -> None:
    services = compose()["services"]
    names = {f"SEMIREC_{f.name.upper()}" for f in fields(Settings)} | {
        f"SEMIREC_TOPIC_{f.name.upper()}" for f in fields(Topics)}
    for name in ("ingest", "catalog", "recommend", "lag-exporter", "trainer"):
        svc = services[name]
        assert svc["build"] == "." and (ROOT / "Dockerfile").is_file()
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert set(env) <= names, f"{name}: unknown settings {set(env) - names}"
        settings = Settings.from_env(env)  # parses and validates every value
        assert settings.metrics_port == 9400 and settings.kafka.startswith("kafka-1:9092,")
        argv = service_command(svc)
        assert argv[0] in VERBS
        # click parses the arguments exactly as the container's entrypoint would
        command = cli.get_command(None, argv[0])  # type: ignore[arg-type]
        command.make_context(argv[0], argv[1:])
    assert int(services["ingest"]["deploy"]["replicas"]) >= 1


def test_prometheus_scrapes_what_compose_serves() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    services = compose()["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"semirec-ingest", "semirec-lag", "triton"} <= set(jobs)
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
    for worker in WORKERS:  # every replica, through Docker's DNS
        dns = jobs[f"semirec-{worker}"]["dns_sd_configs"][0]
        assert dns["names"] == [worker] and dns["type"] == "A"
        assert dns["port"] == int(services[worker]["environment"]["SEMIREC_METRICS_PORT"])
    exporters = ("lag-exporter", "lag-exporter-catalog")
    serve = {name: service_command(services[name]) for name in exporters}
    assert jobs["semirec-lag"]["static_configs"][0]["targets"] == [
        f"{name}:{argv[argv.index('--serve') + 1]}" for name, argv in serve.items()]
    metrics = [next(c for c in services[t]["command"] if c.startswith("--metrics-port"))
               for t in TRITONS]
    assert jobs["triton"]["static_configs"][0]["targets"] == [
        f"{t}:{flag.split('=')[1]}" for t, flag in zip(TRITONS, metrics, strict=True)]
    mounts = services["prometheus"]["volumes"]
    assert "./monitoring/prometheus:/etc/prometheus:ro" in mounts


def test_docker_compose_config_where_available() -> None:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"],
                                    capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    res = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                         env={**os.environ, **SECRETS}, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr


# -- Dockerfile ----------------------------------------------------------------------------

def test_dockerfile_builds_the_packages_with_cpu_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in text
    assert "/whl/cpu" in text
    copied = set(re.findall(r"^COPY (\S+) \./", text, re.M))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied
    for source in copied:
        assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["semirec"]' in text and re.search(r"^USER \d+$", text, re.M)
    assert "ENV SEMIREC_METRICS_PORT=9400" in text and "EXPOSE 9400" in text


# -- alert rules and dashboard -------------------------------------------------------------

def test_alert_rules_use_our_metrics_and_have_runbooks() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"SemirecConsumerLagGrowing", "SemirecDeadLetterRate", "SemirecStateFreshnessSlow",
            "SemirecWorkerDown"} <= names
    known, sections = known_metrics(), anchors(OPERATIONS)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        used = metrics_in(rule["expr"])
        assert used and used <= known, f"{rule['alert']}: unknown metrics {used - known}"
        doc, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert doc == "docs/operations.md" and anchor in sections, rule["alert"]


def test_dashboard_is_provisioned_and_uses_existing_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "semirec.yml").read_text())["providers"][0]
    grafana = compose()["services"]["grafana"]
    assert f"./monitoring/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert datasource["url"] == "http://prometheus:9090"
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and dash["uid"]
    used: set[str] = set()
    for p in panels:
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        for target in p.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"], p["title"]
            used |= metrics_in(target["expr"])
    unknown = used - known_metrics() - TRITON_METRICS
    assert not unknown, f"dashboard uses unknown metrics {unknown}"
    # lag, throughput, freshness, DLQ rate and Triton health are all on it
    assert {"semirec_consumergroup_lag", "semirec_consumergroup_lag_seconds",
            "semirec_events_processed_total", "semirec_events_rejected_total",
            "semirec_append_to_state_seconds_bucket", "semirec_event_to_state_seconds_bucket",
            "nv_inference_request_success", "up"} <= used


def test_promtool_validates_config_rules_and_dashboard_queries(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")

    def run(*args: str) -> None:
        res = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS)
        assert res.returncode == 0, res.stdout + res.stderr

    run("check", "config", "prometheus.yml")
    run("test", "rules", "alerts.test.yml")
    # every dashboard query parses as PromQL (Grafana variables replaced by plain values)
    rules = [{"record": f"dashboard:q{i}",
              "expr": e.replace("$__rate_interval", "5m").replace("$group", ".*")}
             for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run("check", "rules", str(path))


def test_triton_metric_names_used_by_the_dashboard_exist(stack) -> None:
    """Load a tiny python-backend model into the real tritonserver, infer, and scrape."""
    import tritonclient.grpc as grpcclient

    name = f"ops_probe_{uuid.uuid4().hex[:6]}"
    model = Path(stack.model_repository) / name
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(f"""name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X", data_type: TYPE_FP32, dims: [ 2 ] }} ]
output [ {{ name: "Y", data_type: TYPE_FP32, dims: [ 2 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
""")
    (model / "1" / "model.py").write_text("""import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]) for r in requests]
""")
    client = grpcclient.InferenceServerClient(stack.addresses.triton_grpc)
    client.load_model(name)
    try:
        x = grpcclient.InferInput("X", [2], "FP32")
        x.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
        assert client.infer(name, [x]).as_numpy("Y").tolist() == [1.0, 2.0]
        url = f"http://{stack.addresses.triton_metrics}/metrics"
        success = f'nv_inference_request_success{{model="{name}",version="1"}} 1'
        deadline = time.monotonic() + 10  # Triton refreshes its metrics every ~2 s
        while True:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
            if success in text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        client.unload_model(name)
        client.close()
    exposed = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    used = {m for e in dashboard_exprs() for m in metrics_in(e) if m.startswith("nv_")}
    assert used and used <= exposed, f"not exposed by tritonserver: {used - exposed}"
    assert success in text


def test_compose_file_validates_against_the_official_compose_spec(tmp_path: Path) -> None:
    """The compose-spec JSON schema vendored by check-jsonschema (works without Docker)."""
    checker = Path(sys.executable).with_name("check-jsonschema")
    run = [str(checker), "--builtin-schema", "vendor.compose-spec"]
    ok = subprocess.run([*run, str(COMPOSE)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text("services:\n  a:\n    imagee: x\n    deploy:\n      replicas: two\n")
    assert subprocess.run([*run, str(broken)], capture_output=True).returncode != 0
