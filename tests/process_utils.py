"""Processes as a terminal sees them: start a command in its own process group, Ctrl-C it,
and find what is left of that group and of its children's groups."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO


def _stat(pid: int) -> list[str] | None:
    """state, ppid, pgrp, session, ... of a process (None when gone); comm may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgrp) of every process that is not a zombie."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) and st[0] != "Z":
            found[int(entry)] = (int(st[1]), int(st[2]))
    return found


def descendants(pid: int) -> list[int]:
    procs = live_processes()
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, (ppid, _) in procs.items() if ppid == parent]
        out += kids
        todo += kids
    return out


def group_members(pgids: set[int]) -> list[int]:
    """Live processes in any of these process groups."""
    return [p for p, (_, pgrp) in live_processes().items() if pgrp in pgids]


def _foreground_signals() -> None:
    """In the child, before exec: SIGINT and SIGQUIT at their defaults, as a terminal's foreground
    job has them, also when the tests run as a background job of a shell without job control
    (which starts it with both ignored; a Python started so keeps SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Job:
    """``semirec ARGV`` started as a shell starts a foreground job: in its own process group, so
    that :meth:`ctrl_c` can send SIGINT to the whole group as a terminal's Ctrl-C does. Its
    stdout and stderr are read into lists as they come (a full pipe never blocks it)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "semirec", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                     env=env, start_new_session=True,
                                     preexec_fn=_foreground_signals)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.out + self.err)

    def wait_for(self, pattern: str, lines: list[str], timeout: float) -> str:
        """The first line of ``lines`` (self.out or self.err) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                break
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"no line matching {pattern!r} (exit {self.proc.returncode}):\n"
                             f"{self.text[-3000:]}")

    def ctrl_c(self, timeout: float) -> float:
        """SIGINT to the process group; the seconds it took to exit (fails after ``timeout``)."""
        t0 = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running {timeout:.0f}s after Ctrl-C:\n{self.text[-3000:]}") from None
        seconds = time.monotonic() - t0
        for reader in self._readers:
            reader.join(5)
        return seconds

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def wait_gone(pgids: set[int], timeout: float = 3.0) -> list[int]:
    """Live members of these groups left after ``timeout`` (init may need a moment to reap)."""
    deadline = time.monotonic() + timeout
    while (left := group_members(pgids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
