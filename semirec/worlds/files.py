"""A world on disk: ``items.jsonl``, ``events.jsonl``, ``truth.jsonl`` (generated only), ``world.json``.

``events.jsonl`` is in the event contract, ready for ``semirec produce``; ``items.jsonl`` is
in the item contract, ready for ``semirec items encode``. ``item_probs`` needs the generator
and is not saved: regenerate with the seed and options recorded in ``world.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from semirec.core.contracts import ContractError, validate_event
from semirec.worlds.world import World

ITEMS, EVENTS, TRUTH, META = "items.jsonl", "events.jsonl", "truth.jsonl", "world.json"


def _write_lines(path: Path, rows: Any) -> None:
    with path.open("wb") as f:
        for row in rows:
            f.write(orjson.dumps(row))
            f.write(b"\n")


def write_world(world: World, out: Path, summary: dict[str, Any] | None = None) -> list[Path]:
    """Write ``world`` under ``out`` (created if needed); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / ITEMS, out / EVENTS]
    _write_lines(out / ITEMS, world.items)
    _write_lines(out / EVENTS, (e.to_dict() for e in world.events))
    if world.true_prob:
        _write_lines(out / TRUTH, ({"event_id": k, "p": v} for k, v in world.true_prob.items()))
        written.append(out / TRUTH)
    else:
        (out / TRUTH).unlink(missing_ok=True)  # never leave another world's truth behind
    meta = {"name": world.name, "params": world.params, "summary": summary or {}}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    written.append(out / META)
    return written


def _read_lines(path: Path) -> list[Any]:
    with path.open("rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def read_world(path: Path) -> World:
    """Load a world written by :func:`write_world`; every event is validated against the contract."""
    meta = json.loads((path / META).read_text())
    events = []
    for lineno, obj in enumerate(_read_lines(path / EVENTS), 1):
        try:
            events.append(validate_event(obj))
        except ContractError as exc:
            raise ValueError(f"{path / EVENTS}:{lineno}: {exc.reason.value}: {exc}") from exc
    truth = {}
    if (path / TRUTH).exists():
        truth = {r["event_id"]: float(r["p"]) for r in _read_lines(path / TRUTH)}
    return World(meta["name"], _read_lines(path / ITEMS), events, truth, None, meta["params"])
