"""Web page: the operations dashboard at "/" (every staff role may read it; nothing on it writes). Figures
come from `portal.selectors.dashboard` (entity-scoped, cached a few seconds); this module shapes them for the
template: server-rendered inline SVG charts (no script), readable durations, and each figure's link to the
filtered list it summarises (the exception queue, the close pages, or the admin's changelists for events,
journals and ERP attempts)."""
from __future__ import annotations

from urllib.parse import urlencode

from django.shortcuts import render
from django.urls import path, reverse

from portal.selectors import dashboard as dashboard_selectors
from portal.web.access import READERS, page

# Charts are as wide as their card (x in percent) and a fixed height in pixels, so that their text keeps
# its size on a phone instead of shrinking with a scaled viewBox.
CHART_HEIGHT, PLOT_TOP, PLOT_BOTTOM = 200, 16, 24
# (key, name, fill): the brand colour and the stylesheet's ok/bad colours, which read on white at 3:1+.
SERIES = (("received", "Received", "#12343b"), ("posted", "Posted", "#1a7f37"), ("failed", "Failed", "#cf222e"))


def duration(seconds) -> str:
    """A short human duration: 850 ms, 12.4 s, 7 min, 3 h 20 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def cycle(seconds) -> str:
    """A close cycle time (month end to close): a duration, or how early a month closed before it ended."""
    if seconds is None:
        return "—"
    return f"{duration(-seconds)} early" if seconds < 0 else duration(seconds)


def _nice_max(value: int) -> int:
    """The smallest 1/2/5 x 10^n at or above value (at least 1): the chart's top gridline."""
    if value <= 1:
        return 1
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def bar_chart(rows: list[dict], series, *, label_every: int = 1) -> dict:
    """Geometry of a grouped bar chart over `rows` (each a bucket with a count per series key)."""
    plot_h = CHART_HEIGHT - PLOT_TOP - PLOT_BOTTOM
    top = _nice_max(max((row[key] for row in rows for key, *_ in series), default=0))
    slot = 100 / max(len(rows), 1)
    bar_w = slot * 0.8 / len(series)
    bars, labels = [], []
    for i, row in enumerate(rows):
        x0 = i * slot + slot * 0.1
        for j, (key, name, fill) in enumerate(series):
            h = plot_h * row[key] / top
            bars.append({"x": f"{x0 + j * bar_w:.3f}%", "y": round(PLOT_TOP + plot_h - h, 2), "w": f"{bar_w:.3f}%",
                         "h": round(h, 2), "fill": fill, "title": f"{row['label']}: {row[key]:,} {name.lower()}"})
        if i % label_every == 0:
            labels.append({"x": f"{i * slot + slot / 2:.3f}%", "text": row["label"]})
    grid = [{"y": PLOT_TOP + plot_h, "value": "0"}, {"y": PLOT_TOP, "value": f"{top:,}"}]
    if top % 2 == 0:
        grid.insert(1, {"y": PLOT_TOP + plot_h / 2, "value": f"{top // 2:,}"})
    legend = [{"name": name, "fill": fill} for _key, name, fill in series]
    return {"height": CHART_HEIGHT, "bars": bars, "labels": labels, "grid": grid, "legend": legend,
            "label_y": CHART_HEIGHT - 6}


def _admin(name: str, **params) -> str:
    url = reverse(f"admin:{name}")
    return f"{url}?{urlencode(params)}" if params else url


def _exceptions(**params) -> str:
    return f"/exceptions/?{urlencode(params)}"


def links(figures: dict) -> dict:
    oldest = figures["unposted"]["oldest"]
    return {
        "events_24h": _admin("billing_sync_event_changelist", received="24h"),
        "events_posted_24h": _admin("billing_sync_event_changelist", received="24h", status__exact="posted"),
        "events_failed_24h": _admin("billing_sync_event_changelist", received="24h", outcome="failed"),
        "events_14d": _admin("billing_sync_event_changelist", received="14d"),
        "events_last_hour": _admin("billing_sync_event_changelist", received="1h"),
        "open_exceptions": _exceptions(status="unresolved"),
        "journals_posted_24h": _admin("ledger_journal_changelist", status__exact="posted", posted="24h"),
        "journals_posted_1h": _admin("ledger_journal_changelist", status__exact="posted", posted="1h"),
        "journals_retried": _admin("ledger_journal_changelist", retried="yes"),
        "attempts_failed_24h": _admin("ledger_postingattempt_changelist", failed="24h"),
        "unposted": _admin("ledger_journal_changelist", unposted="yes"),
        "oldest_unposted": reverse("admin:ledger_journal_change", args=[oldest["id"]]) if oldest else None,
        "pending_approvals": "/approvals/?status=pending",
    }


@page(read=READERS)
def dashboard(request):
    figures = dashboard_selectors.figures(request.user)
    open_exc = figures["open_exceptions"]
    for row in open_exc["by_code"]:
        row["url"] = _exceptions(status="unresolved", code=row["code"])
        for cell in row["ages"]:
            cell["url"] = _exceptions(status="unresolved", code=row["code"], age=cell["param"])
    for bucket in open_exc["by_age"]:
        bucket["url"] = _exceptions(status="unresolved", age=bucket["param"])
    recon = figures["reconciliation"]
    for row in recon["by_code"]:
        row["url"] = _exceptions(status="unresolved", process="reconciliation", code=row["code"])
    for row in figures["close"]["entities"]:
        for cell in row["cells"]:
            cell["url"] = reverse("web-close-month", args=[row["entity"], cell["label"]])
            cell["cycle"] = cycle(cell["cycle_seconds"])
    months = figures.get("months")
    if months:
        for row in months["exception_resolution"]:
            row["p50_text"], row["p95_text"] = duration(row["p50"]), duration(row["p95"])
            row["url"] = _exceptions(status="resolved", process=row["process"])
    close_cycle = figures["close"]["cycle"]
    latency = figures["latency"]
    oldest = figures["unposted"]["oldest"]
    context = {
        "breaks_link": _exceptions(status="unresolved", process="reconciliation"),
        "close_cycle": {"p50": cycle(close_cycle["p50"]), "p95": cycle(close_cycle["p95"])},
        "f": figures,
        "links": links(figures),
        "hourly_chart": bar_chart(figures["events_hourly"], SERIES, label_every=3),
        "daily_chart": bar_chart(figures["events_daily"], SERIES, label_every=2),
        "throughput_chart": bar_chart(figures["throughput"], (("posted", "Journals posted", "#1a7f37"),),
                                      label_every=3),
        "latency": {"p50_24h": duration(latency["p50_24h"]), "p95_24h": duration(latency["p95_24h"]),
                    "p50_1h": duration(latency["p50_1h"]), "p95_1h": duration(latency["p95_1h"])},
        "oldest_age": duration(oldest["age_seconds"]) if oldest else None,
        "scope": ", ".join(figures["scope"]) if figures["scope"] is not None else "all entities",
    }
    return render(request, "dashboard/index.html", context)


urlpatterns = [path("", dashboard, name="dashboard")]
