"""Stock is never oversold, whoever races for it: 50 supply officers for the last 10 units, on one
replica and on two, and reservations, issues, returns and releases side by side. Against
PostgreSQL, where the transactions really run side by side; the ledger replays to every balance."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import text

from ecs.db import Database
from tests.integration import test_stockpile_service as service
from tests.integration.test_stockpile_service import Stockpile, depot

# The in-process service and the operator tokens, shared with the service tests.
stockpile_app = service.stockpile_app
headers = service.headers


async def count(db_url: str, sql: str) -> list[tuple]:
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(text(sql))]
    finally:
        await db.dispose()


async def assert_books_balance(db_url: str) -> None:
    """No balance negative, no more reserved than on hand, reserved = what allocations hold, and
    replaying the ledger gives every balance."""
    assert (
        await count(db_url, "SELECT id FROM stock_lines WHERE on_hand < 0 OR reserved < 0 OR reserved > on_hand") == []
    )
    assert (
        await count(
            db_url,
            "SELECT s.id FROM stock_lines s LEFT JOIN (SELECT line_id, SUM(held) h FROM allocations GROUP BY line_id) a"
            " ON a.line_id = s.id WHERE s.reserved <> COALESCE(a.h, 0)",
        )
        == []
    )
    assert (
        await count(
            db_url,
            "SELECT s.id FROM stock_lines s LEFT JOIN (SELECT line_id, SUM(delta) d FROM ledger GROUP BY line_id) l"
            " ON l.line_id = s.id WHERE s.on_hand <> COALESCE(l.d, 0)",
        )
        == []
    )


async def test_fifty_clients_racing_for_the_last_ten_units_get_exactly_ten(stockpile_app, pg_url, headers):
    async with stockpile_app(pg_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 2.0), depot("C", 3.0)])
        await s.receive("A", {"item": "stretcher", "lot": "a", "quantity": 3})
        await s.receive("B", {"item": "stretcher", "lot": "b", "quantity": 3})
        await s.receive("C", {"item": "stretcher", "lot": "c", "quantity": 4})
        incidents = [await s.incident() for _ in range(5)]

        async def one(i: int) -> dict:
            return await s.ok(f"/v1/incidents/{incidents[i % 5]}/reservations", {"item": "stretcher", "quantity": 1})

        answers = await asyncio.gather(*(one(i) for i in range(50)))

        assert sum(a["reserved"] for a in answers) == 10
        assert sum(a["missing"] for a in answers) == 40
        assert sum(line["available"] for line in await s.stock(item="stretcher")) == 0
        await assert_books_balance(pg_url)


async def test_two_replicas_racing_reserve_issue_return_and_release_never_oversell(stockpile_app, pg_url, headers):
    async with stockpile_app(pg_url) as (_, one, bus), stockpile_app(pg_url) as (_, two, _bus):
        first, second = Stockpile(one, bus, headers), Stockpile(two, bus, headers)
        await first.setup([depot(f"D{i}", i * 0.7) for i in range(1, 6)])
        for i in range(1, 6):
            await first.receive(f"D{i}", {"item": "first_aid_kit", "lot": f"L{i}", "quantity": 20})
        incidents = [await first.incident() for _ in range(4)]
        rng = random.Random(7)

        async def worker(s: Stockpile, n: int) -> int:
            got = 0
            for _ in range(n):
                incident = rng.choice(incidents)
                r = await s.post(
                    f"/v1/incidents/{incident}/reservations", {"item": "first_aid_kit", "quantity": rng.randint(1, 9)}
                )
                assert r.status_code == 201, r.text
                body = r.json()
                got += body["reserved"]
                if body["reserved"] and rng.random() < 0.6:
                    rid = body["id"]
                    issue = await s.post(f"/v1/reservations/{rid}/issue", {"quantity": 1})
                    assert issue.status_code == 200, issue.text
                    back = await s.post(f"/v1/reservations/{rid}/return", {"quantity": 1})
                    assert back.status_code == 200, back.text
                    release = await s.post(f"/v1/reservations/{rid}/release", {})
                    assert release.status_code in (200, 409), release.text
            return got

        await asyncio.gather(*(worker(first if i % 2 else second, 12) for i in range(20)))

        await assert_books_balance(pg_url)
        [(on_hand, reserved)] = await count(pg_url, "SELECT SUM(on_hand), SUM(reserved) FROM stock_lines")
        assert on_hand == 100  # every issue came back
        [(held,)] = await count(pg_url, "SELECT COALESCE(SUM(held), 0) FROM allocations")
        assert reserved == held <= 100
