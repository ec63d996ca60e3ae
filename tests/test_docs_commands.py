"""Every command README.md and docs/*.md give runs as written: each `semirec ...`, `python -m ...`
and `pytest tests/...` line is found in the text and run with `--help` (or, for pytest, its
files checked), so a move or a rename cannot leave a documented command broken."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `python -m MODULE`, `.venv/bin/python -m MODULE` (any env prefix), `semirec VERB [SUB]`
PYTHON_M = re.compile(r"python -m ([a-z_][a-z0-9_.]*)")
SEMIREC = re.compile(r"(?:^|[`\s(;&|])(?:\.venv/bin/)?semirec((?: [a-z][a-z0-9|-]*)+)")
PYTEST = re.compile(r"pytest ((?:tests/[\w/.]+(?:::\w+)?\s*)+)")
WORD = re.compile(r"[a-z][a-z0-9-]*")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
SPAN = re.compile(r"`([^`]+)`")


def code_lines(text: str) -> list[str]:
    """The text of fenced blocks (line by line) and of inline code spans: where commands are."""
    lines = [ln for block in FENCE.findall(text) for ln in block.splitlines()[1:-1]]
    spans = [" ".join(s.split()) for s in SPAN.findall(FENCE.sub("", text))]
    return lines + spans


def documented() -> tuple[set[str], set[tuple[str, ...]], set[str]]:
    modules: set[str] = set()
    verbs: set[tuple[str, ...]] = set()
    test_files: set[str] = set()
    for doc in DOCS:
        for line in code_lines(doc.read_text()):
            modules.update(m for m in PYTHON_M.findall(line) if m != "pytest" and not m.endswith("."))
            for m in SEMIREC.finditer(line):
                words = m.group(1).split()
                # a verb path: the words up to the first argument; `a|b` are alternatives
                path: list[list[str]] = [[]]
                for w in words[:2]:
                    alts = [a for a in w.split("|") if WORD.fullmatch(a)]
                    if not alts:
                        break
                    path = [[*p, a] for p in path for a in alts]
                verbs.update(tuple(p) for p in path if p)
            for group in PYTEST.findall(line):
                test_files.update(t.split("::")[0] for t in group.split())
    return modules, verbs, test_files


MODULES, VERBS, TEST_FILES = documented()


def run_help(argv: list[str]) -> tuple[list[str], int, str]:
    res = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return argv, res.returncode, res.stdout + res.stderr


def test_the_docs_give_commands() -> None:
    assert {"semirec.trainer.offline.ceiling", "benchmarks.ranker", "benchmarks.serving"} <= MODULES
    assert ("demo",) in VERBS and ("stack", "up") in VERBS and len(VERBS) >= 15


@pytest.mark.slow
def test_every_documented_command_runs() -> None:
    semirec = str(Path(sys.executable).with_name("semirec"))
    argvs = [[sys.executable, "-m", m] for m in sorted(MODULES)]
    for verb in sorted(VERBS):
        argvs.append([semirec, *verb])
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run_help, argvs))
    failed = []
    for argv, rc, out in results:
        shown = shlex.join(argv[1:] if argv[0] == sys.executable else ["semirec", *argv[1:]])
        if rc != 0 or not re.search(r"usage", out, re.I):
            failed.append(f"{shown} --help: exit {rc}\n{out[-800:]}")
    assert not failed, "\n\n".join(failed)


def test_documented_test_files_exist() -> None:
    missing = sorted(t for t in TEST_FILES if not (ROOT / t).exists())
    assert TEST_FILES and not missing, missing
