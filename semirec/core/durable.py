"""Durable writes: what a crash (or a power cut) cannot leave half-written or lost.

One rule for every file or folder that must survive a crash (trainer checkpoints, model
repository versions and ``aliases.json``, ranker and encoder checkpoints): write it under a
temporary name in the same directory, fsync its contents, rename it into place (atomic on
POSIX), then fsync the directory so that the rename itself is on disk. Readers see the old
version or the new one, never part of one.

- :func:`write_atomic`: bytes or text to a file;
- :func:`replace`: a file or folder written under a temporary name, into place;
- :func:`fsync_tree`: a folder and everything under it (files and sub-folders);
- :func:`fsync_dir`: one directory's entries (after a rename or unlink in it).

Caches that are rebuilt when missing (ONNX exports, item-vector ``.npy`` files) only need the
atomic rename and do not use this module.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries (names created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file and folder under ``path`` (deepest first), then ``path`` itself.
    A plain file is flushed alone."""
    path = Path(path)
    if not path.is_dir():
        _fsync_file(path)
        return
    for here, dirs, files in os.walk(path, topdown=False):
        for name in files:
            _fsync_file(Path(here, name))
        for name in dirs:
            fsync_dir(Path(here, name))
    fsync_dir(path)


def replace(src: Path, dst: Path) -> Path:
    """Make ``src`` (a file or a folder, complete) durable, rename it to ``dst`` and flush
    ``dst``'s directory (and ``src``'s, when another). Returns ``dst``.

    A folder at ``dst`` is only replaced when empty (``os.replace`` semantics)."""
    src, dst = Path(src), Path(dst)
    fsync_tree(src)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent.resolve() != dst.parent.resolve():
        fsync_dir(src.parent)
    return dst


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` durably: a temporary file beside it, fsynced, renamed over
    ``path``, then the directory fsynced. Text is written as UTF-8. Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    body = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target`` if it exists; else ``build(tmp)`` writes a temporary file beside it (raising
    to refuse it), which is then renamed over ``target``. Returns ``target``."""
    target = Path(target)
    if target.is_file():
        return target
    fd, name = tempfile.mkstemp(prefix=".build-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
