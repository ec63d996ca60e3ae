"""``semirec user``: a user's sequences as stored in Redis."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from semirec.core.faults import EXIT_NOT_FOUND
from semirec.core.sequences import UserState
from semirec.core.settings import Settings
from semirec.core.store import SequenceStore


async def fetch(settings: Settings, user_id: str) -> UserState | None:
    store = SequenceStore.from_url(settings.redis_url)
    try:
        return await store.get(user_id)
    finally:
        await store.close()


@click.command()
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def user(user_id: str, as_json: bool) -> None:
    """Show USER_ID's video and product sequences (oldest first, hour buckets).

    A user with no state exits with 67 (``"found": false`` with --json).
    """
    settings = Settings.from_env()
    state = asyncio.run(fetch(settings, user_id))
    view = (state or UserState()).view(settings.time_bucket_s)
    if as_json:
        print(json.dumps({"user_id": user_id, "found": state is not None, **view}))
        if state is None:
            sys.exit(EXIT_NOT_FOUND)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if state is None:
        Console(stderr=True).print(f"[yellow]no state for user {user_id!r}[/] "
                                   "(no complete watch or click yet)")
        sys.exit(EXIT_NOT_FOUND)
    for name, seq in view.items():
        table = Table(title=f"{user_id}: {name} ({len(seq)})", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("item_id")
        table.add_column("hour", justify="right")
        for i, entry in enumerate(seq, 1):
            table.add_row(str(i), str(entry["item_id"]), str(entry["hour"]))
        console.print(table)
