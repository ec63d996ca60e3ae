"""benchmarks/machine.py: the CPU model, flags, cores and load every benchmark reports."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from benchmarks.machine import FLAGS, describe, finish, machine

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# run by benchmarks/ingest.py as child processes: their JSON line is read by it, and its own
# final JSON carries the machine
CHILDREN = {"batch_noop.py", "faust_noop.py", "batch_path.py", "ingest_costs.py"}


def test_machine_on_this_host() -> None:
    info = machine()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                 if line.startswith("model name"))
    flags = set(next(line.split(":", 1)[1] for line in cpuinfo.splitlines()
                     if line.startswith("flags")).split())
    assert info["cpu_model"] == model
    assert info["isa_flags"] == [f for f in FLAGS if f in flags]
    assert info["cores"] == os.cpu_count()
    assert len(info["load_avg_1_5_15"]) == 3
    done = finish({"x": 1}, info)
    assert done["machine"]["cpu_model"] == model and len(done["machine"]["load_avg_at_end"]) == 3
    line = describe(done["machine"])
    assert model in line and f"{os.cpu_count()} cores" in line


def test_flags_parsed_from_a_cpuinfo_text() -> None:
    text = ("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n\n"
            "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    info = machine(text)
    assert info["cpu_model"] == "Some Xeon"
    assert info["isa_flags"] == ["avx2", "avx512f", "amx_tile", "amx_bf16"]


def _prints_json(tree: ast.Module) -> bool:
    """A ``print(json.dumps(...))`` / ``click.echo(orjson.dumps(...)...)`` anywhere in the module."""
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and (getattr(call.func, "id", None) == "print"
                                           or getattr(call.func, "attr", None) == "echo") \
                and any(isinstance(n, ast.Attribute) and n.attr == "dumps" for n in ast.walk(call)):
            return True
    return False


def test_every_benchmark_with_a_json_result_reports_the_machine() -> None:
    printing = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        tree = ast.parse(path.read_text())
        if path.name in CHILDREN or path.name == "machine.py" or not _prints_json(tree):
            continue
        printing.append(path.name)
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == "benchmarks.machine" for alias in node.names}
        called = {node.func.id for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert {"finish", "print_describe"} <= imported & called, path.name
    assert {"serving.py", "ranker.py", "ingest.py", "encoders.py"} <= set(printing)
