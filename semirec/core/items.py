"""The item contract (topic ``items``), enforced: item bytes -> :class:`Item` or a rejection.

An item message is a JSON or msgpack object (see docs/contracts.md, "Item contract"):
``item_id``, ``domain``, ``title``, ``images`` (file paths, or base64: a ``data:`` URI or a
bare base64 string of an image file),
``category`` (required for products), ``tags`` and ``updated_at`` (the item's version: unix
seconds or ISO-8601; optional, the message's timestamp stands in). Unknown fields are ignored. The message
key must equal the ``item_id``, so every upsert of an item lands on one partition, in order.

Reason codes are :class:`semirec.core.contracts.Reason`; ``bad_image`` marks an image that cannot be
read or decoded (found when the encoder loads it).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import orjson

from semirec.core.contracts import ContractError, Domain, Reason, decode_body, id_problem, parse_ts

MAX_ITEM_BYTES = 1024 * 1024  # Kafka's default message.max.bytes
MAX_TITLE_CHARS = 1000
MAX_IMAGES = 8  # video frames; a product's cover is its first image
MAX_TAGS = 32
MAX_LABEL_CHARS = 64  # one tag or one category
MAX_PATH_CHARS = 4096
_DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.ASCII)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$", re.ASCII)
# PNG, JPEG, GIF, WebP (RIFF): how a bare base64 string is told from a file path
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")


class ItemError(ContractError):
    """A contract violation of an item."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image: a file path, or the bytes of an inline (base64) image."""

    path: str | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        """The image file's bytes; raises :class:`ItemError` (``bad_image``) if unreadable."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise ItemError(Reason.BAD_IMAGE, f"image {self.path!r}: {exc.strerror}") from exc

    def to_json(self) -> str:
        if self.data is not None:
            return "data:image/png;base64," + base64.b64encode(self.data).decode()
        assert self.path is not None
        return self.path


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    domain: Domain
    title: str
    images: tuple[ImageRef, ...]
    category: str | None = None
    tags: tuple[str, ...] = ()
    updated_at: float | None = None  # unix seconds: the version that orders this item's upserts

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "item_id": self.item_id, "domain": self.domain.value, "title": self.title,
            "images": [img.to_json() for img in self.images], "tags": list(self.tags),
        }
        if self.category is not None:
            out["category"] = self.category
        if self.updated_at is not None:
            out["updated_at"] = self.updated_at
        return out


def decode_item_body(raw: bytes) -> Any:
    """Decode a JSON or msgpack item body (limit :data:`MAX_ITEM_BYTES`)."""
    try:
        return decode_body(raw, limit=MAX_ITEM_BYTES)
    except ContractError as exc:
        raise ItemError(exc.reason, str(exc)) from exc


def _string(obj: dict[str, Any], name: str, *, max_chars: int, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ItemError(Reason.MISSING_FIELD, f"missing field {name!r}")
        return None
    if not isinstance(value, str):
        raise ItemError(Reason.BAD_TYPE, f"{name} must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text or len(text) > max_chars:
        raise ItemError(Reason.BAD_VALUE, f"{name} must be 1..{max_chars} characters (not blank)")
    return text


def _sniff_base64(value: str) -> bytes | None:
    """The bytes of a bare base64 image (recognised by its magic bytes), else ``None``."""
    if len(value) < 16 or len(value) % 4 or not _BASE64.match(value):
        return None
    head = base64.b64decode(value[:16])
    if not head.startswith(IMAGE_MAGIC):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _image(value: Any, index: int) -> ImageRef:
    where = f"images[{index}]"
    if not isinstance(value, str):
        raise ItemError(Reason.BAD_TYPE, f"{where} must be a string, got {type(value).__name__}")
    if match := _DATA_URI.match(value):
        try:
            data = base64.b64decode(value[match.end():], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ItemError(Reason.BAD_VALUE, f"{where} is not valid base64: {exc}") from exc
        if not data:
            raise ItemError(Reason.BAD_VALUE, f"{where} is an empty data URI")
        return ImageRef(data=data)
    if value.startswith("data:"):
        raise ItemError(Reason.BAD_VALUE, f"{where} must be 'data:image/<type>;base64,...' or a path")
    if (data := _sniff_base64(value)) is not None:
        return ImageRef(data=data)
    if not value.strip() or len(value) > MAX_PATH_CHARS or "\x00" in value:
        raise ItemError(Reason.BAD_VALUE, f"{where} must be a file path of 1..{MAX_PATH_CHARS} chars")
    return ImageRef(path=value)


def _list(obj: dict[str, Any], name: str, *, lo: int, hi: int) -> list[Any]:
    value = obj.get(name)
    if value is None:
        if lo > 0:
            raise ItemError(Reason.MISSING_FIELD, f"missing field {name!r}")
        return []
    if not isinstance(value, list):
        raise ItemError(Reason.BAD_TYPE, f"{name} must be a list, got {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise ItemError(Reason.BAD_VALUE, f"{name} must hold {lo}..{hi} entries, got {len(value)}")
    return value


def validate_item(obj: Any, *, base_dir: Path | None = None) -> Item:
    """Validate a decoded body; relative image paths are resolved against ``base_dir``."""
    if not isinstance(obj, dict):
        raise ItemError(Reason.NOT_AN_OBJECT, f"item must be an object, got {type(obj).__name__}")
    item_id = obj.get("item_id")
    if item_id is None:
        raise ItemError(Reason.MISSING_FIELD, "missing field 'item_id'")
    if not isinstance(item_id, str):
        raise ItemError(Reason.BAD_TYPE, f"item_id must be a string, got {type(item_id).__name__}")
    if problem := id_problem("item_id", item_id):
        raise ItemError(Reason.BAD_VALUE, problem)
    if obj.get("domain") is None:
        raise ItemError(Reason.MISSING_FIELD, "missing field 'domain'")
    try:
        domain = Domain(obj["domain"])
    except (ValueError, TypeError):
        raise ItemError(
            Reason.BAD_VALUE, f"domain must be 'video' or 'product', got {obj['domain']!r}"
        ) from None
    title = _string(obj, "title", max_chars=MAX_TITLE_CHARS)
    assert title is not None
    images = tuple(_image(v, i) for i, v in enumerate(_list(obj, "images", lo=0, hi=MAX_IMAGES)))
    if base_dir is not None:
        images = tuple(
            ImageRef(path=str(base_dir / img.path)) if img.path and not Path(img.path).is_absolute()
            else img for img in images
        )
    category = _string(obj, "category", max_chars=MAX_LABEL_CHARS,
                       required=domain is Domain.PRODUCT)
    tags = []
    for i, tag in enumerate(_list(obj, "tags", lo=0, hi=MAX_TAGS)):
        if not isinstance(tag, str):
            raise ItemError(Reason.BAD_TYPE, f"tags[{i}] must be a string, got {type(tag).__name__}")
        if not tag.strip() or len(tag.strip()) > MAX_LABEL_CHARS:
            raise ItemError(Reason.BAD_VALUE, f"tags[{i}] must be 1..{MAX_LABEL_CHARS} characters")
        tags.append(tag.strip())
    updated_at = None
    if obj.get("updated_at") is not None:
        try:
            updated_at = parse_ts(obj["updated_at"])
        except ContractError as exc:
            raise ItemError(exc.reason, f"updated_at: {exc}") from exc
    return Item(item_id, domain, title, images, category, tuple(tags), updated_at)


def parse_item(raw: bytes, key: bytes | None = None) -> Item:
    """Bytes from the items topic -> :class:`Item`; the key must equal the item_id."""
    item = validate_item(decode_item_body(raw))
    if key is None:
        raise ItemError(Reason.KEY_MISMATCH, "message has no key; the key must be the item_id")
    if key != item.item_id.encode():
        raise ItemError(Reason.KEY_MISMATCH,
                        f"message key {key[:64]!r} differs from item_id {item.item_id!r}")
    return item


def as_item(value: Item | dict[str, Any]) -> Item:
    """An :class:`Item` as is, or a dict validated against the contract."""
    return value if isinstance(value, Item) else validate_item(value)


def encode_item(item: Item | dict[str, Any], fmt: str = "json") -> bytes:
    body = item.to_dict() if isinstance(item, Item) else item
    if fmt == "json":
        return orjson.dumps(body)
    if fmt == "msgpack":
        return msgpack.packb(body, use_bin_type=True)
    raise ValueError(f"unknown format {fmt!r}")
