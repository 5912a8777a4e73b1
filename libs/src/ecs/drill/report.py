"""The drill's after-action report and improvement plan (AAR/IP, after the US HSEEP template).

``write_report`` takes the result dict the drill runner produces and writes four files: the result
itself as JSON for machines, the report as Markdown and as one self-contained HTML page, and the
map as a PNG. Markdown and HTML are rendered from the same tables, so they always agree.

Units throughout: distances in metres, scenario and real times in seconds (scenario seconds count
from the start of the scenario, shown as h:mm:ss), timestamps UTC ISO-8601, positions in decimal
degrees WGS-84 (lat, lon), as in ``ecs.geo``.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from ecs.geo import EARTH_RADIUS_M

from .scenario import COUNT_MEASURES

RATING_MEANINGS = {
    "P": "performed without challenges",
    "S": "performed with some challenges",
    "M": "performed with major challenges",
    "U": "unable to be performed",
}

# The Markdown and HTML are for people; report.json keeps every row.
TIMELINE_HEAD_ROWS = 150
TIMELINE_TAIL_ROWS = 50

TO_BE_FILLED_IN = "to be filled in"
NOT_OBSERVED = "not observed"
NONE_SHOWN = "—"

METRES_PER_DEGREE_LAT = math.pi * EARTH_RADIUS_M / 180
# Where an empty map is centred (People's Square): the system covers Shanghai, and a blank map still
# needs a place for its scale bar to make sense.
DEFAULT_CENTRE = (31.2304, 121.4737)
MIN_MAP_HALF_SPAN_M = 500.0
MAP_PADDING = 1.25  # room in the corners for the scale bar and the north arrow


def write_report(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write the drill's after-action report into ``out_dir`` (created if missing).

    ``result`` is the drill runner's result dict (scenario, started_at/ended_at as UTC ISO-8601,
    status and reason, objectives, injects, timeline, incidents, units, depots, shelters, counts,
    live_channel_exercise_messages, improvement_plan). Scenario times are seconds from the start of
    the scenario, perimeter radii metres, positions WGS-84 degrees.

    Writes ``report.json`` (the result unchanged), ``report.md``, ``report.html`` (self-contained,
    the map inlined as a base64 PNG, every text HTML-escaped) and ``map.png``, and returns their
    paths as ``{"json": ..., "markdown": ..., "html": ..., "map": ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
        "map": out_dir / "map.png",
    }
    map_png = draw_map(result)
    paths["map"].write_bytes(map_png)
    paths["json"].write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(result), encoding="utf-8")
    paths["html"].write_text(render_html(result, map_png), encoding="utf-8")
    return paths


# --- the report's content, independent of the format ------------------------------------------


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str = ""  # said under the table, e.g. how many rows were left out


@dataclass(frozen=True)
class Report:
    title: str
    facts: list[tuple[str, str]]  # the header: label, value
    fail_banner: str | None
    summary: str
    tables: list[Table]


def build_report(result: dict) -> Report:
    """The report's text, as plain strings in tables, for any renderer to lay out."""
    scenario = result["scenario"]
    objectives = _list(result, "objectives")
    return Report(
        title=f"After-action report: {scenario['name']}",
        facts=_header_facts(result),
        fail_banner=_fail_banner(result),
        summary=_rating_summary(objectives),
        tables=[
            _objective_table(objectives),
            _inject_table(_list(result, "injects")),
            _timeline_table(_list(result, "timeline")),
            _improvement_table(objectives, _list(result, "improvement_plan")),
            _overhead_table(result),
        ],
    )


def _list(result: dict, key: str) -> list[dict]:
    # A runner that failed early may not have got as far as some lists; the report must still render.
    return result.get(key) or []


def _header_facts(result: dict) -> list[tuple[str, str]]:
    scenario = result["scenario"]
    facts = [
        ("Scenario", scenario["name"]),
        ("Type", scenario.get("type") or NONE_SHOWN),
        ("File", scenario.get("file") or NONE_SHOWN),
        ("Speed factor", f"{scenario.get('speed', 1.0):g}×"),
        ("Started", format_utc(result.get("started_at"))),
        ("Ended", format_utc(result.get("ended_at"))),
        ("Status", result["status"]),
    ]
    if result["status"] != "completed":
        facts.append(("Reason", result.get("reason") or "no reason given"))
    if scenario.get("description"):
        facts.append(("Description", scenario["description"]))
    return facts


def _fail_banner(result: dict) -> str | None:
    leaked = result.get("live_channel_exercise_messages") or 0
    if leaked <= 0:
        return None
    plural = "message" if leaked == 1 else "messages"
    return (
        f"FAIL: {leaked} exercise {plural} reached a live public channel. "
        "The drill fails outright, whatever its objective ratings."
    )


def _rating_summary(objectives: list[dict]) -> str:
    counts = {rating: 0 for rating in RATING_MEANINGS}
    for objective in objectives:
        counts[objective["rating"]] = counts.get(objective["rating"], 0) + 1
    tally = ", ".join(f"{rating} {count}" for rating, count in counts.items())
    return f"{len(objectives)} objectives: {tally}."


def _objective_table(objectives: list[dict]) -> Table:
    rows = [
        (
            o["id"],
            o.get("capability", ""),
            o.get("description", ""),
            _figure(o, "target_s", NONE_SHOWN),
            _figure(o, "measured_s", NOT_OBSERVED),
            f"{o['rating']}: {RATING_MEANINGS.get(o['rating'], 'unknown rating')}",
            o.get("rule", ""),
            o.get("evidence", ""),
        )
        for o in objectives
    ]
    headers = ("Id", "Capability", "Description", "Target", "Measured", "Rating", "Rule", "Evidence")
    return Table("Objectives", headers, rows, note="" if rows else "No objectives were set.")


def _inject_table(injects: list[dict]) -> Table:
    rows = [
        (
            i["id"],
            format_scenario_time(i.get("at_s")),
            i.get("kind", ""),
            i["status"],
            format_scenario_time(i.get("done_at_s"), missing=NONE_SHOWN),
            i.get("detail", ""),
        )
        for i in injects
    ]
    headers = ("Id", "At", "Kind", "Status", "Done at", "Detail")
    return Table("Injects", headers, rows, note="" if rows else "No injects.")


def _timeline_table(timeline: list[dict]) -> Table:
    left_out = len(timeline) - TIMELINE_HEAD_ROWS - TIMELINE_TAIL_ROWS
    shown = timeline if left_out <= 0 else timeline[:TIMELINE_HEAD_ROWS] + timeline[-TIMELINE_TAIL_ROWS:]
    rows = [
        (
            format_scenario_time(t.get("scenario_s")),
            f"{t['real_s']:.1f}" if t.get("real_s") is not None else NONE_SHOWN,
            t.get("kind", ""),
            t.get("subject", ""),
            t.get("incident_id") or NONE_SHOWN,
            t.get("summary", ""),
        )
        for t in shown
    ]
    note = "" if rows else "Nothing happened."
    if left_out > 0:
        # Keep the start and the end: the end is where a stopped drill says why.
        gap = (f"… {left_out} rows left out …", "", "", "", "", "")
        rows.insert(TIMELINE_HEAD_ROWS, gap)
        note = (
            f"{len(timeline)} rows in all: the first {TIMELINE_HEAD_ROWS} and the last {TIMELINE_TAIL_ROWS} "
            f"are shown, {left_out} left out; report.json has every row."
        )
    headers = ("Scenario time", "Real s", "Kind", "Subject", "Incident", "Summary")
    return Table("Timeline", headers, rows, note=note)


def _improvement_table(objectives: list[dict], plan: list[dict]) -> Table:
    rows = [
        (
            f"{o.get('description') or o['id']}: rated {o['rating']}, "
            f"{RATING_MEANINGS.get(o['rating'], 'unknown rating')} (evidence: {o.get('evidence') or 'none'})",
            o["id"],
            TO_BE_FILLED_IN,
            TO_BE_FILLED_IN,
        )
        for o in objectives
        if o["rating"] != "P"
    ]
    rows += [
        (
            p["finding"],
            p.get("objective_id") or NONE_SHOWN,
            p.get("owner") or TO_BE_FILLED_IN,
            p.get("due") or TO_BE_FILLED_IN,
        )
        for p in plan
    ]
    headers = ("Finding", "Objective", "Owner", "Due")
    return Table("Improvement plan", headers, rows, note="" if rows else "No findings.")


def _overhead_table(result: dict) -> Table:
    counts = result.get("counts") or {}
    rows = [
        ("Events seen", str(counts.get("events_seen", NONE_SHOWN))),
        ("Events per second handled by the runner", _format_rate(counts.get("events_per_s"))),
        ("Events per second produced (seen / real duration)", _format_rate(_produced_rate(result))),
        ("Injects done", str(counts.get("injects_done", NONE_SHOWN))),
        ("Injects failed", str(counts.get("injects_failed", NONE_SHOWN))),
    ]
    known = {"events_seen", "events_per_s", "injects_done", "injects_failed"}
    rows += [(key, str(value)) for key, value in counts.items() if key not in known]
    return Table("Runner overhead", ("Count", "Value"), rows)


def _produced_rate(result: dict) -> float | None:
    seen = (result.get("counts") or {}).get("events_seen")
    started, ended = _parse_utc(result.get("started_at")), _parse_utc(result.get("ended_at"))
    if seen is None or started is None or ended is None:
        return None
    duration_s = (ended - started).total_seconds()
    return seen / duration_s if duration_s > 0 else None


def _format_rate(rate: float | None) -> str:
    return NONE_SHOWN if rate is None else f"{rate:.1f}"


def format_scenario_time(seconds: float | None, missing: str = NONE_SHOWN) -> str:
    """Scenario seconds as h:mm:ss (hours not wrapped at 24), rounded to the second; ``missing`` for None."""
    if seconds is None:
        return missing
    sign = "-" if seconds < 0 else ""
    whole = round(abs(seconds))
    return f"{sign}{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def format_utc(timestamp: str | None) -> str:
    """An ISO-8601 timestamp as ``YYYY-MM-DD HH:MM:SS UTC``; shown as given when it does not parse."""
    parsed = _parse_utc(timestamp)
    if parsed is None:
        return timestamp or NONE_SHOWN
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_utc(timestamp: str | None) -> datetime | None:
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp)
    except ValueError:
        return None


# --- Markdown ----------------------------------------------------------------------------------


def render_markdown(result: dict) -> str:
    """The report as Markdown: header, objectives, injects, timeline (capped), map, plan, overhead."""
    report = build_report(result)
    lines = [f"# {_md(report.title)}", ""]
    lines += [f"- **{label}:** {_md(value)}" for label, value in report.facts]
    lines.append("")
    if report.fail_banner:
        lines += [f"> **{_md(report.fail_banner)}**", ""]
    for table in report.tables:
        lines += [f"## {table.title}", ""]
        if table.title == "Objectives":
            lines += [_md(report.summary), ""]
        if table.rows:
            lines.append("| " + " | ".join(table.headers) + " |")
            lines.append("|" + "---|" * len(table.headers))
            lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in table.rows]
            lines.append("")
        if table.note:
            lines += [_md(table.note), ""]
        if table.title == "Timeline":
            lines += ["## Map", "", "![Map of the drill](map.png)", ""]
    lines.append("Ratings: " + "; ".join(f"{r}: {m}" for r, m in RATING_MEANINGS.items()) + ".")
    return "\n".join(lines) + "\n"


def _md(text: Any) -> str:
    # Markdown passes raw HTML through to whatever renders it, so '<' is escaped as well as the
    # characters that would break a table row.
    text = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<")
    return " ".join(text.split())


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #eee; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dt { font-weight: bold; }
.fail { background: #b00020; color: #fff; font-weight: bold; padding: 0.75rem 1rem; font-size: 1.2rem; }
.note { color: #555; }
img { max-width: 100%; }
"""


def render_html(result: dict, map_png: bytes) -> str:
    """The report as one self-contained HTML page, ``map_png`` inlined; every text is HTML-escaped."""
    report = build_report(result)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        "<dl>" + "".join(f"<dt>{e(label)}</dt><dd>{e(value)}</dd>" for label, value in report.facts) + "</dl>",
    ]
    if report.fail_banner:
        parts.append(f'<p class="fail">{e(report.fail_banner)}</p>')
    for table in report.tables:
        parts.append(f"<h2>{e(table.title)}</h2>")
        if table.title == "Objectives":
            parts.append(f"<p>{e(report.summary)}</p>")
        if table.rows:
            head = "".join(f"<th>{e(h)}</th>" for h in table.headers)
            body = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if table.note:
            parts.append(f'<p class="note">{e(table.note)}</p>')
        if table.title == "Timeline":
            encoded = base64.b64encode(map_png).decode("ascii")
            parts.append(f'<h2>Map</h2><img alt="Map of the drill" src="data:image/png;base64,{encoded}">')
    ratings = "; ".join(f"{r}: {m}" for r, m in RATING_MEANINGS.items())
    parts.append(f'<p class="note">Ratings: {e(ratings)}.</p></body></html>')
    return "\n".join(parts) + "\n"


# --- the map -----------------------------------------------------------------------------------


_WIDE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]+")


def _drawable(text: str) -> str:
    """``text`` for the map: as it is when a CJK font is installed, else without its Chinese
    (the default font has no CJK glyphs and would draw empty boxes); the report's tables keep it."""
    if _has_cjk_font():
        return text
    return re.sub(r"\(\s*\)", "", _WIDE.sub("", text)).strip() or "drill"


@functools.cache
def _has_cjk_font() -> bool:
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    for name in ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "SimHei"):
        if name in names:
            import matplotlib

            matplotlib.rcParams["font.sans-serif"] = [name, *matplotlib.rcParams["font.sans-serif"]]
            return True
    return False


def _figure(objective: dict, key: str, missing: str) -> str:
    """An objective's target or measurement: a count as a number, a time as h:mm:ss."""
    value = objective.get(key)
    if value is not None and objective.get("measure") in {m.value for m in COUNT_MEASURES}:
        return f"{value:g}"
    return format_scenario_time(value, missing=missing)


def draw_map(result: dict) -> bytes:
    """The drill's map as PNG bytes: incidents with their perimeters to scale, units, depots and
    shelters (size by capacity, colour by occupancy), in longitude/latitude with an equal metric
    aspect, a scale bar in km and a north arrow. Drawn with Agg; no tiles, no network."""
    incidents = _list(result, "incidents")
    units, depots, shelters = _list(result, "units"), _list(result, "depots"), _list(result, "shelters")
    (south, west), (north, east) = _map_bounds(incidents + units + depots + shelters)
    lat0 = (south + north) / 2
    cos_lat0 = math.cos(math.radians(lat0))

    fig = Figure(figsize=(9, 8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(west, east)
    ax.set_ylim(south, north)
    ax.set_aspect(1 / cos_lat0)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_xlabel("Longitude (°E)")
    ax.set_ylabel("Latitude (°N)")
    ax.set_title(f"{_drawable(result['scenario']['name'])}: drill map")
    ax.grid(True, linewidth=0.3, alpha=0.5)

    legend: list[Line2D] = []
    if incidents:
        for incident in incidents:
            perimeter = incident.get("perimeter")
            if perimeter and perimeter.get("radius_m"):
                ax.add_patch(_perimeter_patch(perimeter))
        ax.scatter([i["lon"] for i in incidents], [i["lat"] for i in incidents], marker="X", s=160, c="red", zorder=5)
        for incident in incidents:
            label = f"{incident['id'][:8]} {incident.get('category') or ''}".strip()
            ax.annotate(label, (incident["lon"], incident["lat"]), xytext=(6, 6), textcoords="offset points")
        legend.append(_legend_handle("Incident", marker="X", color="red", size=11))
        if any(i.get("perimeter") for i in incidents):
            legend.append(Line2D([], [], color="red", linestyle="--", label="Perimeter (to scale)"))
    if units:
        ax.scatter([u["lon"] for u in units], [u["lat"] for u in units], marker="^", s=45, c="tab:blue", zorder=4)
        legend.append(_legend_handle("Unit", marker="^", color="tab:blue"))
    if depots:
        ax.scatter([d["lon"] for d in depots], [d["lat"] for d in depots], marker="s", s=70, c="saddlebrown", zorder=3)
        legend.append(_legend_handle("Depot", marker="s", color="saddlebrown"))
    if shelters:
        capacity = [max(s.get("capacity") or 0, 0) for s in shelters]
        occupancy = [(s.get("occupied") or 0) / c if c else 1.0 for s, c in zip(shelters, capacity, strict=True)]
        largest = max(capacity) or 1
        points = ax.scatter(
            [s["lon"] for s in shelters],
            [s["lat"] for s in shelters],
            marker="o",
            s=[40 + 360 * c / largest for c in capacity],
            c=occupancy,
            cmap="RdYlGn_r",
            vmin=0.0,
            vmax=1.0,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
        fig.colorbar(points, ax=ax, shrink=0.6, label="Shelter occupancy (occupied / capacity)")
        legend.append(_legend_handle("Shelter (size: capacity)", marker="o", color="lightgray"))

    if legend:
        # Below the axes, so it never hides a point.
        ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize="small")
    else:
        ax.text(0.5, 0.5, "No positions recorded in this drill", transform=ax.transAxes, ha="center", va="center")
    _draw_scale_bar(ax, west, east, cos_lat0)
    _draw_north_arrow(ax)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _map_bounds(points: list[dict]) -> tuple[tuple[float, float], tuple[float, float]]:
    """(south, west), (north, east): every point and perimeter, padded, at least 1 km across."""
    lats, lons = [], []
    for point in points:
        lats.append(point["lat"])
        lons.append(point["lon"])
        perimeter = point.get("perimeter")
        if perimeter and perimeter.get("radius_m"):
            dlat, dlon = _degrees_of(perimeter["radius_m"], perimeter["lat"])
            lats += [perimeter["lat"] - dlat, perimeter["lat"] + dlat]
            lons += [perimeter["lon"] - dlon, perimeter["lon"] + dlon]
    if not lats:
        lats, lons = [DEFAULT_CENTRE[0]], [DEFAULT_CENTRE[1]]
    lat_c, lon_c = (min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2
    min_dlat, min_dlon = _degrees_of(MIN_MAP_HALF_SPAN_M, lat_c)
    half_lat = max((max(lats) - min(lats)) / 2 * MAP_PADDING, min_dlat)
    half_lon = max((max(lons) - min(lons)) / 2 * MAP_PADDING, min_dlon)
    return (lat_c - half_lat, lon_c - half_lon), (lat_c + half_lat, lon_c + half_lon)


def _degrees_of(metres: float, lat: float) -> tuple[float, float]:
    """A distance in metres as (degrees of latitude, degrees of longitude) at ``lat``."""
    dlat = metres / METRES_PER_DEGREE_LAT
    return dlat, dlat / math.cos(math.radians(lat))


def _perimeter_patch(perimeter: dict) -> Ellipse:
    dlat, dlon = _degrees_of(perimeter["radius_m"], perimeter["lat"])
    return Ellipse(
        (perimeter["lon"], perimeter["lat"]),
        width=2 * dlon,
        height=2 * dlat,
        fill=True,
        facecolor=(1, 0, 0, 0.08),
        edgecolor="red",
        linestyle="--",
        linewidth=1.2,
        zorder=2,
    )


def _legend_handle(label: str, marker: str, color: str, size: float = 8) -> Line2D:
    return Line2D(
        [],
        [],
        marker=marker,
        color="none",
        markerfacecolor=color,
        markeredgecolor="black",
        markersize=size,
        label=label,
    )


def _draw_scale_bar(ax, west: float, east: float, cos_lat0: float) -> None:
    metres_per_degree_lon = METRES_PER_DEGREE_LAT * cos_lat0
    length_m = _nice_length((east - west) * metres_per_degree_lon / 5)
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    bar = AnchoredSizeBar(
        ax.transData,
        length_m / metres_per_degree_lon,
        label,
        loc="lower left",
        size_vertical=(ax.get_ylim()[1] - ax.get_ylim()[0]) * 0.008,
        label_top=True,
        frameon=True,
    )
    bar.patch.set_alpha(0.7)
    ax.add_artist(bar)


def _nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 × 10^n metres not above ``metres``."""
    magnitude = 10 ** math.floor(math.log10(metres))
    return max(step * magnitude for step in (1, 2, 5) if step * magnitude <= metres)


def _draw_north_arrow(ax) -> None:
    arrow = {"facecolor": "black", "width": 4, "headwidth": 10}
    ax.annotate("", xy=(0.95, 0.92), xytext=(0.95, 0.82), xycoords="axes fraction", arrowprops=arrow, zorder=6)
    ax.text(0.95, 0.93, "N", transform=ax.transAxes, ha="center", va="bottom", fontsize=12, fontweight="bold")
