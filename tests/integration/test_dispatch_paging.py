"""dispatch's operator API against odd input and long lists, on both stores: a number past 64 bits
or a U+0000 in a path, query or cursor is a 4xx, never a 500; the incident list is in the order it
says (the most recently changed first), and paging through it neither repeats nor skips."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from ecs.db import Database

NUL_CURSOR = base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00","\\u0000"]').decode()


async def _seed(db_url: str, n: int) -> list[str]:
    """n incidents in dispatch's copy, each changed a minute after the previous; returns their ids
    most recently changed first."""
    from dispatch import store

    db = Database(db_url)
    base = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    rows = []
    for k in range(n):
        changed = base + timedelta(minutes=k)
        rows.append(
            {
                "id": uuid.uuid4().hex,
                "category": "fire",
                "level": 4,
                "stage": "reported",
                "lat": 31.2,
                "lon": 121.4,
                "exercise": False,
                "perimeter": None,
                "merged_into": None,
                "stage_version": 1,
                "level_version": 1,
                "perimeter_secured": None,
                "settled": None,
                "shortfalls": [],
                "created_at": base - timedelta(days=1, minutes=k),  # created in the opposite order
                "updated_at": changed,
            }
        )
    try:
        async with db.engine.begin() as conn:
            await conn.execute(insert(store.incidents), rows)
    finally:
        await db.dispose()
    return [r["id"] for r in reversed(rows)]


async def test_the_incident_list_is_most_recently_changed_first_and_pages_stably(
    dispatch_app, db_url, operator_headers
):
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        expected = await _seed(db_url, 57)
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
            r = await api.get("/v1/incidents", params=params, headers=headers)
            assert r.status_code == 200, r.text
            page = r.json()
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == expected


ODD_INPUT = [
    ("/v1/assignments/9223372036854775808", {}, 422),
    ("/v1/assignments/99999999999999999999999999", {}, 422),
    ("/v1/assignments/0", {}, 422),
    ("/v1/assignments/9223372036854775807", {}, 404),
    ("/v1/units/%00", {}, (404, 422)),  # not found, or refused before routing
    ("/v1/incidents/%00", {}, (404, 422)),
    ("/v1/incidents", {"cursor": "bm90IGEgY3Vyc29y"}, 422),
    ("/v1/incidents", {"cursor": NUL_CURSOR}, 422),
    ("/v1/incidents", {"stage": "reported\x00"}, 422),
    ("/v1/incidents", {"stage": "bogus"}, 422),  # a stage no incident can be in: 422, not an empty page
    ("/v1/units", {"cursor": "\x00"}, 422),
    ("/v1/units", {"cursor": "not a unit id!"}, 422),  # one rule: a cursor of another form is 422
    ("/v1/units", {"agency": "fire\x00"}, 422),
    ("/v1/units", {"agency": "army"}, 422),  # not an agency: 422 naming it, not an empty page
]


async def test_large_numbers_and_odd_text_are_4xx_not_500(dispatch_app, db_url, operator_headers):
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        got, wanted = [], []
        for path, params, status in ODD_INPUT:
            r = await api.get(path, params=params, headers=headers)
            ok = r.status_code in (status if isinstance(status, tuple) else (status,))
            got.append((path, params, r.status_code if not ok else status, r.headers["content-type"].split(";")[0]))
            wanted.append((path, params, status, "application/problem+json"))
        assert got == wanted
        r = await api.post("/v1/assignments/9223372036854775808/release", json={"reason": "done"}, headers=headers)
        assert r.status_code == 422, r.text
        r = await api.post("/v1/assignments/1/release", json={"reason": "done\x00"}, headers=headers)
        assert r.status_code == 422 and "reason" in r.text, r.text  # before PostgreSQL refuses it
