"""Per-user rolling sequences: the one definition of how events become state.

A user's state holds the newest ``seq_len`` complete video watches and product clicks and,
apart, the newest ``seq_len`` incomplete video watches (``skipped``: with the complete ones they
give a user's completion rate by content), each as ``(ts_ms, item_id)`` in time order (ties
broken by item_id, so the result depends only on the set of events, not on their arrival
order), a bounded window of recently applied
event-id digests and, per source partition, the last applied offset (replay protection).
It is stored as one packed binary value (:func:`pack` / :func:`unpack`; format 2 added the
incomplete watches, and format-1 blobs still decode, with none).

De-duplication (producer retries, at any delay): an event whose ``(ts_ms, item_id)`` is
already an entry of its sequence (incomplete watches: of ``skipped``) is a duplicate, however
many events came between (a retry carries the original's item and timestamp). A retry whose original has been
truncated away is older than everything kept and is dropped like any late event. The
event-id window catches what the entry rule cannot see: a retry re-stamped with another
timestamp, within the user's last ``dedup_window`` applied events. Consequence, by design:
two distinct events with the same user, domain, item and millisecond make one entry.

The ingest agent, the trainer's sample builder and evaluation all use :func:`apply`.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from semirec.core.contracts import Domain, Event

FORMAT = 2  # 1: no incomplete watches (still decoded)
_HEAD = struct.Struct("<BQ")  # format, write version
_APPLIED = struct.Struct("<Iq")  # partition, offset
_SEP = "\x00"  # item ids never contain control characters (see contracts)


class Entry(NamedTuple):
    """One sequence entry; a tuple, so sorting and bisecting run at C speed."""

    ts_ms: int
    item_id: str

    def hour(self, bucket_s: int = 3600) -> int:
        return self.ts_ms // (bucket_s * 1000)


@dataclass(slots=True)
class UserState:
    video: list[Entry] = field(default_factory=list)
    product: list[Entry] = field(default_factory=list)
    recent: list[int] = field(default_factory=list)  # event-id digests, oldest first
    applied: dict[int, int] = field(default_factory=dict)  # partition -> last applied offset
    version: int = 0  # bumped on every write (compare-and-set token)
    skipped: list[Entry] = field(default_factory=list)  # incomplete video watches

    def sequence(self, domain: Domain) -> list[Entry]:
        return self.video if domain is Domain.VIDEO else self.product

    def sequence_of(self, event: Event) -> list[Entry]:
        """The list ``event`` joins: complete watches, product clicks or incomplete watches."""
        return self.sequence(event.domain) if event.appends else self.skipped

    def view(self, bucket_s: int = 3600) -> dict[str, list[dict[str, object]]]:
        """``{"video": [{"item_id", "hour"}...], "product": [...]}``, oldest first."""
        return {
            name: [{"item_id": e.item_id, "hour": e.hour(bucket_s)} for e in seq]
            for name, seq in (("video", self.video), ("product", self.product))
        }


Observer = Callable[["UserState", Event, int], None]


def digest(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def apply(
    state: UserState,
    events: Iterable[tuple[Event, int]],
    *,
    partition: int = 0,
    seq_len: int = 50,
    dedup_window: int = 64,
    before_watch: Observer | None = None,
    kept: dict[str, int] | None = None,
) -> int:
    """Apply ``(event, offset)`` pairs (in offset order) to ``state`` in place.

    Offsets at or below the partition's last applied offset are replays and are skipped
    (offline callers pass increasing offsets, e.g. from ``enumerate``). Entries already kept
    (same item and millisecond in the same list) and event_ids in the recent window change
    nothing. Incomplete watches go to ``state.skipped``. Returns how many events were applied.
    ``before_watch(state, event, offset)`` sees every video event that is not a replay, a
    recent duplicate or an entry already kept (complete or not) with the state exactly as it
    was before that event (point-in-time training samples); it must not change the state.
    ``kept`` (optional) counts the applied events per list: ``video``, ``product``, ``skipped``.
    """
    applied = 0
    last = state.applied.get(partition, -1)
    recent = set(state.recent)
    for event, offset in events:
        if offset <= last:
            continue
        d = digest(event.event_id)
        if d in recent:
            continue
        seq = state.sequence_of(event)
        entry = Entry(event.ts_ms, event.item_id)
        at = bisect.bisect_left(seq, entry)
        if at < len(seq) and seq[at] == entry:
            continue  # already kept: a retry of an applied event, however late
        if before_watch is not None and event.domain is Domain.VIDEO:
            before_watch(state, event, offset)
        if len(seq) >= seq_len and at == 0:
            pass  # older than everything we keep: it would be truncated at once
        else:
            seq.insert(at, entry)
            del seq[: max(0, len(seq) - seq_len)]
        if dedup_window:
            state.recent.append(d)
            recent.add(d)
            if len(state.recent) > dedup_window:
                recent.discard(state.recent.pop(0))
        state.applied[partition] = last = offset
        applied += 1
        if kept is not None:
            name = "skipped" if seq is state.skipped else event.domain.value
            kept[name] = kept.get(name, 0) + 1
    return applied


def replay(events: Iterable[Event], *, seq_len: int = 50, dedup_window: int = 64) -> dict[str, UserState]:
    """States computed straight from an event list (offline reference, sample building)."""
    states: dict[str, UserState] = {}
    for offset, event in enumerate(events):
        state = states.setdefault(event.user_id, UserState())
        apply(state, [(event, offset)], seq_len=seq_len, dedup_window=dedup_window)
    return states


# -- packed binary codec -------------------------------------------------------------------
# header (format u8, version u64) | n_applied u8, (partition u32, offset i64)* |
# n_recent u16, digest u64* | per list (video, product, and from format 2 skipped): n u8,
# ts_ms i64 * n, ids_len u32, item ids joined by NUL (UTF-8)

_new_entry = partial(tuple.__new__, Entry)  # Entry from a (ts, id) pair without a Python frame


def _pack_entries(out: bytearray, seq: list[Entry]) -> None:
    ts, ids = zip(*seq, strict=True) if seq else ((), ())
    joined = _SEP.join(ids).encode()
    out.append(len(seq))
    out += struct.pack(f"<{len(seq)}q", *ts)
    out += struct.pack("<I", len(joined))
    out += joined


def pack(state: UserState) -> bytes:
    out = bytearray(_HEAD.pack(FORMAT, state.version))
    out.append(len(state.applied))
    for part, off in sorted(state.applied.items()):
        out += _APPLIED.pack(part, off)
    out += struct.pack(f"<H{len(state.recent)}Q", len(state.recent), *state.recent)
    _pack_entries(out, state.video)
    _pack_entries(out, state.product)
    _pack_entries(out, state.skipped)
    return bytes(out)


def _unpack_entries(blob: bytes, pos: int) -> tuple[list[Entry], int]:
    n = blob[pos]
    ts = struct.unpack_from(f"<{n}q", blob, pos + 1)
    pos += 1 + 8 * n
    (ln,) = struct.unpack_from("<I", blob, pos)
    pos += 4
    ids = blob[pos : pos + ln].decode().split(_SEP) if n else []
    return list(map(_new_entry, zip(ts, ids, strict=True))), pos + ln


def unpack(blob: bytes) -> UserState:
    fmt, version = _HEAD.unpack_from(blob, 0)
    if fmt not in (1, FORMAT):
        raise ValueError(f"unknown user-state format {fmt}")
    pos = _HEAD.size
    applied = {}
    for _ in range(blob[pos]):
        part, off = _APPLIED.unpack_from(blob, pos + 1)
        applied[part] = off
        pos += _APPLIED.size
    pos += 1
    (n_recent,) = struct.unpack_from("<H", blob, pos)
    recent = list(struct.unpack_from(f"<{n_recent}Q", blob, pos + 2))
    pos += 2 + 8 * n_recent
    video, pos = _unpack_entries(blob, pos)
    product, pos = _unpack_entries(blob, pos)
    skipped = _unpack_entries(blob, pos)[0] if fmt >= 2 else []
    return UserState(video, product, recent, applied, version, skipped)


def version_token(blob: bytes | None) -> bytes:
    """The compare-and-set token of a stored blob (its header); empty when absent."""
    return b"" if blob is None else blob[: _HEAD.size]
