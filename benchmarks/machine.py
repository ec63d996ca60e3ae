"""The machine a benchmark ran on: CPU model, the instruction-set flags that matter for the
GEMM kernels, cores and load. Every benchmark that prints a final JSON object puts
:func:`machine` under its key ``"machine"`` (with :func:`finish`, which adds the load at the
end) and prints :func:`describe` as a line for people."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
         "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")


def _cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo``."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def machine(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model, ISA flags (of :data:`FLAGS`, those present), cores, 1/5/15-minute load."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    info = _cpuinfo(cpuinfo)
    flags = set(info.get("flags", "").split())
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "isa_flags": [f for f in FLAGS if f in flags],
        "cores": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def finish(result: dict[str, Any], at_start: dict[str, Any]) -> dict[str, Any]:
    """``result`` with ``"machine"``: ``at_start`` plus the load at the end."""
    result["machine"] = {**at_start, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}
    return result


def describe(info: dict[str, Any]) -> str:
    """One line for people."""
    end = f" -> {info['load_avg_at_end'][0]}" if "load_avg_at_end" in info else ""
    return (f"machine: {info['cpu_model']}, {info['cores']} cores, "
            f"flags {' '.join(info['isa_flags']) or '-'}, load {info['load_avg_1_5_15'][0]}{end}")


def print_describe(info: dict[str, Any]) -> None:
    """:func:`describe` on stderr (stdout's last line stays the JSON object)."""
    print(describe(info), file=sys.stderr, flush=True)
