"""The item contract: what is accepted, what is refused, with which reason code."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import msgpack
import orjson
import pytest
from PIL import Image

from semirec.core.contracts import Domain, Reason
from semirec.core.items import (
    MAX_ITEM_BYTES,
    ImageRef,
    ItemError,
    encode_item,
    parse_item,
    validate_item,
)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buf, format="PNG")
    return buf.getvalue()


def product(**over) -> dict:
    body = {"item_id": "p1", "domain": "product", "title": "Soft knit sweater",
            "category": "pullover", "tags": ["knit", "warm"],
            "images": ["data:image/png;base64," + base64.b64encode(png()).decode()]}
    body.update(over)
    return body


def reason_of(obj, key: bytes | None = b"p1", raw: bytes | None = None) -> str:
    with pytest.raises(ItemError) as info:
        parse_item(raw if raw is not None else orjson.dumps(obj), key)
    return str(info.value.reason)


def test_valid_product_and_video_parse_with_all_image_forms(tmp_path: Path) -> None:
    item = parse_item(orjson.dumps(product()), b"p1")
    assert item.domain is Domain.PRODUCT and item.category == "pullover"
    assert item.tags == ("knit", "warm") and item.images[0].data == png()
    bare = base64.b64encode(png()).decode()  # bare base64, as the generated world writes it
    (tmp_path / "f.png").write_bytes(png())
    video = validate_item({"item_id": "v1", "domain": "video", "title": "Try-on haul",
                           "images": [bare, "f.png", str(tmp_path / "f.png")]}, base_dir=tmp_path)
    assert video.category is None and video.tags == ()
    assert [ref.read() for ref in video.images] == [png()] * 3
    assert video.images[1].path == str(tmp_path / "f.png")


def test_msgpack_bodies_and_round_trip() -> None:
    item = parse_item(msgpack.packb(product(), use_bin_type=True), b"p1")
    assert parse_item(encode_item(item), b"p1") == item
    assert parse_item(encode_item(item, "msgpack"), b"p1") == item


@pytest.mark.parametrize(("change", "reason"), [
    ({"item_id": None}, Reason.MISSING_FIELD),
    ({"item_id": 7}, Reason.BAD_TYPE),
    ({"domain": "book"}, Reason.BAD_VALUE),
    ({"title": None}, Reason.MISSING_FIELD),
    ({"title": "   "}, Reason.BAD_VALUE),
    ({"title": "x" * 1001}, Reason.BAD_VALUE),
    ({"category": None}, Reason.MISSING_FIELD),  # required for products
    ({"category": 3}, Reason.BAD_TYPE),
    ({"tags": "knit"}, Reason.BAD_TYPE),
    ({"tags": ["ok", ""]}, Reason.BAD_VALUE),
    ({"tags": [f"t{i}" for i in range(33)]}, Reason.BAD_VALUE),
    ({"images": "a.png"}, Reason.BAD_TYPE),
    ({"images": ["a.png"] * 9}, Reason.BAD_VALUE),
    ({"images": [42]}, Reason.BAD_TYPE),
    ({"images": ["data:image/png;base64,@@@"]}, Reason.BAD_VALUE),
    ({"images": ["data:text/plain,hello"]}, Reason.BAD_VALUE),
    ({"updated_at": True}, Reason.BAD_TIMESTAMP),
    ({"updated_at": -1}, Reason.BAD_TIMESTAMP),
    ({"updated_at": "yesterday"}, Reason.BAD_TIMESTAMP),
])
def test_field_violations_have_exact_reasons(change: dict, reason: Reason) -> None:
    body = product(**change)
    body = {k: v for k, v in body.items() if v is not None}
    assert reason_of(body) == reason


def test_updated_at_is_the_optional_version() -> None:
    assert parse_item(orjson.dumps(product()), b"p1").updated_at is None
    item = parse_item(orjson.dumps(product(updated_at="2026-01-02T03:04:05.5Z")), b"p1")
    assert item.updated_at == 1767323045.5
    assert parse_item(encode_item(item), b"p1") == item
    assert parse_item(orjson.dumps(product(updated_at=17)), b"p1").updated_at == 17.0


def test_body_level_rejections() -> None:
    assert reason_of(None, raw=b"\xc1 not json") == Reason.UNDECODABLE
    assert reason_of(None, raw=b"[1, 2]") == Reason.NOT_AN_OBJECT
    assert reason_of(None, raw=b"{" + b" " * MAX_ITEM_BYTES + b"}") == Reason.TOO_LARGE
    assert reason_of(product(), key=None) == Reason.KEY_MISMATCH
    assert reason_of(product(), key=b"p2") == Reason.KEY_MISMATCH


def test_unreadable_image_is_bad_image() -> None:
    with pytest.raises(ItemError) as info:
        ImageRef(path="/nonexistent/semirec.png").read()
    assert info.value.reason is Reason.BAD_IMAGE
