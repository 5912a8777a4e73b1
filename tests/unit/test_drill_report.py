"""The drill's after-action report: four files, the tables a reviewer reads, escaping, the map."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import re

import pytest

from ecs.drill.report import RATING_MEANINGS, _degrees_of, format_scenario_time, write_report
from ecs.geo import haversine_m

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUND = (31.2400, 121.4900)


def bund_crowd_crush() -> dict:
    """A realistic result: a crowd crush on the Bund, a second incident nearby, mixed ratings."""
    lat0, lon0 = BUND
    objectives = [
        ("OBJ-1", "Operational communications", "First unit dispatched", 120.0, 95.0, "P"),
        ("OBJ-2", "On-scene security", "Perimeter drawn around the crush", 300.0, 410.0, "S"),
        ("OBJ-3", "Mass care", "First shelter opened", 900.0, 1500.0, "M"),
        ("OBJ-4", "Public information and warning", "Exercise alert approved", 600.0, None, "U"),
        ("OBJ-5", "Logistics", "Barriers issued from a depot", 1200.0, 1100.0, "P"),
        ("OBJ-6", "Mass care", "100 evacuees checked in", 1800.0, 2000.0, "S"),
    ]
    return {
        "scenario": {
            "name": "Bund crowd crush, New Year's Eve",
            "type": "functional",
            "file": "scenarios/bund-crowd-crush.yaml",
            "speed": 10.0,
            "description": "A crowd crush on the Bund promenade near Chen Yi Square at midnight.",
        },
        "started_at": "2025-12-31T15:50:00+00:00",
        "ended_at": "2025-12-31T16:00:00+00:00",
        "status": "completed",
        "reason": None,
        "objectives": [
            {
                "id": oid,
                "capability": capability,
                "description": description,
                "measure": "seconds from the first alarm",
                "target_s": target,
                "measured_s": measured,
                "rating": rating,
                "rule": "P within target; S within 1.5× target; M within 2×; U not observed or beyond",
                "evidence": f"timeline rows for {oid}",
            }
            for oid, capability, description, target, measured, rating in objectives
        ],
        "injects": [
            {"id": "INJ-1", "at_s": 0.0, "kind": "alarm", "status": "done", "detail": "110 call", "done_at_s": 0.4},
            {
                "id": "INJ-2",
                "at_s": 240.0,
                "kind": "alarm",
                "status": "done",
                "detail": "second call",
                "done_at_s": 241,
            },
            {
                "id": "INJ-3",
                "at_s": 600.0,
                "kind": "alert",
                "status": "failed",
                "detail": "409 refused",
                "done_at_s": None,
            },
            {
                "id": "INJ-4",
                "at_s": 900.0,
                "kind": "note",
                "status": "skipped",
                "detail": "depends on INJ-3",
                "done_at_s": None,
            },
        ],
        "timeline": [
            {
                "scenario_s": 10.0 * k,
                "real_s": 1.0 * k,
                "at": f"2025-12-31T15:50:{k:02d}+00:00",
                "kind": "event",
                "subject": "incident.updated",
                "incident_id": "INC-1",
                "summary": "crowd density rising" if k != 3 else "caller said <script>alert('x')</script> & left",
            }
            for k in range(6)
        ],
        "incidents": [
            {
                "id": "INC-1",
                "category": "crowd",
                "level": 1,
                "stage": "responding",
                "lat": lat0,
                "lon": lon0,
                "perimeter": {"kind": "circle", "lat": lat0, "lon": lon0, "radius_m": 300.0},
            },
            {
                "id": "INC-2",
                "category": "medical",
                "level": 3,
                "stage": "reported",
                "lat": lat0 - 0.006,
                "lon": lon0 - 0.004,
                "perimeter": None,
            },
        ],
        "units": [
            {
                "id": f"U-{n:02d}",
                "kind": ("ambulance", "police", "fire")[n % 3],
                "lat": lat0 + 0.01 * math.sin(n),
                "lon": lon0 + 0.012 * math.cos(n),
                "status": "en_route" if n % 2 else "available",
            }
            for n in range(20)
        ],
        "depots": [
            {"id": f"D-{n}", "name": f"Depot {n}", "lat": lat0 + 0.02 * (n - 1.5), "lon": lon0 - 0.02} for n in range(4)
        ],
        "shelters": [
            {
                "id": f"S-{n}",
                "name": f"Shelter {n}",
                "lat": lat0 - 0.015 + 0.003 * n,
                "lon": lon0 + 0.015,
                "capacity": 100 * (n + 1),
                "occupied": 30 * n,
            }
            for n in range(10)
        ],
        "counts": {"events_seen": 1200, "events_per_s": 1180.0, "injects_done": 2, "injects_failed": 1},
        "live_channel_exercise_messages": 0,
        "improvement_plan": [
            {
                "finding": "Alert templates lack an exercise banner",
                "objective_id": "OBJ-4",
                "owner": "PN desk",
                "due": "2026-02-01",
            }
        ],
    }


def empty_failed_drill() -> dict:
    result = bund_crowd_crush()
    result.update(
        status="failed",
        reason="inject INJ-1 failed: incident-intake answered 503; the service was lost mid-drill",
        objectives=[],
        injects=[],
        timeline=[],
        incidents=[],
        units=[],
        depots=[],
        shelters=[],
        improvement_plan=[],
    )
    return result


def test_writes_all_four_files_and_the_json_is_the_result(tmp_path):
    result = bund_crowd_crush()

    paths = write_report(result, tmp_path / "out")

    assert set(paths) == {"json", "markdown", "html", "map"}
    assert [p.name for p in paths.values()] == ["report.json", "report.md", "report.html", "map.png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == result


def test_markdown_holds_each_objective_with_its_rating_and_the_summary(tmp_path):
    result = bund_crowd_crush()

    markdown = write_report(result, tmp_path)["markdown"].read_text(encoding="utf-8")

    for objective in result["objectives"]:
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {objective['id']} |"))
        assert f"{objective['rating']}: {RATING_MEANINGS[objective['rating']]}" in row
    assert "| OBJ-4 |" in markdown and "not observed" in _row(markdown, "OBJ-4")
    assert "0:25:00" in _row(markdown, "OBJ-3")  # 1500 scenario seconds
    assert "6 objectives: P 2, S 2, M 1, U 1." in markdown


def test_header_names_the_scenario_and_its_times(tmp_path):
    markdown = write_report(bund_crowd_crush(), tmp_path)["markdown"].read_text(encoding="utf-8")

    assert "# After-action report: Bund crowd crush, New Year's Eve" in markdown
    assert "**Type:** functional" in markdown
    assert "**Speed factor:** 10×" in markdown
    assert "**Started:** 2025-12-31 15:50:00 UTC" in markdown  # the time says UTC once
    assert "scenarios/bund-crowd-crush.yaml" in markdown
    assert "**Reason:**" not in markdown


def test_injects_show_their_status(tmp_path):
    markdown = write_report(bund_crowd_crush(), tmp_path)["markdown"].read_text(encoding="utf-8")

    assert "| failed |" in _row(markdown, "INJ-3") and "409 refused" in _row(markdown, "INJ-3")
    assert "| skipped |" in _row(markdown, "INJ-4")
    assert "| 0:04:00 |" in _row(markdown, "INJ-2")


def test_html_escapes_text_and_embeds_the_map(tmp_path):
    paths = write_report(bund_crowd_crush(), tmp_path)
    page = paths["html"].read_text(encoding="utf-8")

    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; left" in page
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == paths["map"].read_bytes()
    assert "<link" not in page and 'src="http' not in page  # self-contained


def test_markdown_does_not_pass_raw_html_through(tmp_path):
    markdown = write_report(bund_crowd_crush(), tmp_path)["markdown"].read_text(encoding="utf-8")

    assert not re.search(r"(?<!\\)<", markdown)  # every '<' is backslash-escaped
    assert "\\<script>alert('x')\\</script> & left" in markdown


def test_map_is_a_real_png(tmp_path):
    image = pytest.importorskip("PIL.Image")
    data = write_report(bund_crowd_crush(), tmp_path)["map"].read_bytes()

    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000
    with image.open(io.BytesIO(data)) as png:
        assert png.format == "PNG"
        assert png.width > 500 and png.height > 500


def test_a_drill_that_failed_before_anything_happened_renders_with_its_reason(tmp_path):
    result = empty_failed_drill()

    paths = write_report(result, tmp_path)

    markdown = paths["markdown"].read_text(encoding="utf-8")
    page = paths["html"].read_text(encoding="utf-8")
    assert "**Status:** failed" in markdown
    assert "**Reason:** inject INJ-1 failed: incident-intake answered 503; the service was lost mid-drill" in markdown
    assert "the service was lost mid-drill" in page
    assert "0 objectives: P 0, S 0, M 0, U 0." in markdown
    assert paths["map"].read_bytes().startswith(PNG_MAGIC)


def test_a_single_point_renders(tmp_path):
    result = empty_failed_drill()
    result["incidents"] = [{**bund_crowd_crush()["incidents"][1]}]

    data = write_report(result, tmp_path)["map"].read_bytes()

    assert data.startswith(PNG_MAGIC)


def test_a_result_missing_its_lists_still_renders(tmp_path):
    result = {key: value for key, value in empty_failed_drill().items() if key in ("scenario", "status", "reason")}

    paths = write_report(result, tmp_path)

    assert "the service was lost mid-drill" in paths["markdown"].read_text(encoding="utf-8")


@pytest.mark.parametrize(("leaked", "banner"), [(0, False), (1, True), (3, True)])
def test_an_exercise_message_on_a_live_channel_fails_the_drill(tmp_path, leaked, banner):
    result = bund_crowd_crush()
    result["live_channel_exercise_messages"] = leaked

    paths = write_report(result, tmp_path)

    markdown = paths["markdown"].read_text(encoding="utf-8")
    page = paths["html"].read_text(encoding="utf-8")
    assert ("FAIL:" in markdown) is banner
    assert ('class="fail"' in page) is banner
    if banner:
        assert f"FAIL: {leaked} exercise message" in markdown


def test_markdown_caps_a_long_timeline_and_says_how_many_rows_were_left_out(tmp_path):
    result = bund_crowd_crush()
    row = result["timeline"][0]
    result["timeline"] = [{**row, "scenario_s": float(k), "summary": f"event {k}"} for k in range(1000)]

    paths = write_report(result, tmp_path)

    markdown = paths["markdown"].read_text(encoding="utf-8")
    timeline = markdown.split("## Timeline")[1].split("## Map")[0]
    assert len([line for line in timeline.splitlines() if "| event " in line]) == 200
    assert "800 rows left out" in timeline
    assert "| event 0 |" in timeline and "| event 999 |" in timeline  # the start and the end are kept
    assert len(json.loads(paths["json"].read_text(encoding="utf-8"))["timeline"]) == 1000


def test_improvement_plan_has_a_row_per_objective_not_performed_cleanly_and_the_given_rows(tmp_path):
    markdown = write_report(bund_crowd_crush(), tmp_path)["markdown"].read_text(encoding="utf-8")

    plan = markdown.split("## Improvement plan")[1].split("## ")[0]
    rows = [line for line in plan.splitlines() if line.startswith("| ") and not line.startswith("| Finding")]
    assert len(rows) == 4 + 1  # S, M, U, S and one given row
    assert sum("| to be filled in | to be filled in |" in line for line in rows) == 4
    assert "| OBJ-4 | PN desk | 2026-02-01 |" in plan
    assert "| OBJ-1 |" not in plan and "| OBJ-5 |" not in plan


def test_runner_overhead_is_printed(tmp_path):
    markdown = write_report(bund_crowd_crush(), tmp_path)["markdown"].read_text(encoding="utf-8")

    overhead = markdown.split("## Runner overhead")[1]
    assert "| Events seen | 1200 |" in overhead
    assert "| Events per second handled by the runner | 1180.0 |" in overhead
    assert "| Events per second produced (seen / real duration) | 2.0 |" in overhead  # 1200 over 600 s


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0, "0:00:00"), (59.6, "0:01:00"), (3725.0, "1:02:05"), (90061.0, "25:01:01"), (None, "not observed")],
)
def test_scenario_time_is_shown_as_hours_minutes_seconds(seconds, shown):
    assert format_scenario_time(seconds, missing="not observed") == shown


@pytest.mark.parametrize("radius_m", [50.0, 300.0, 2000.0])
def test_a_perimeter_is_drawn_to_scale_at_shanghai_latitude(radius_m):
    lat, lon = BUND
    dlat, dlon = _degrees_of(radius_m, lat)

    assert haversine_m(lat, lon, lat + dlat, lon) == pytest.approx(radius_m, rel=1e-3)
    assert haversine_m(lat, lon, lat, lon + dlon) == pytest.approx(radius_m, rel=1e-3)


def test_the_result_is_not_changed(tmp_path):
    result = bund_crowd_crush()
    before = copy.deepcopy(result)

    write_report(result, tmp_path)

    assert result == before


def _row(markdown: str, row_id: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {row_id} |"))
