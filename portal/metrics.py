"""Prometheus metrics at /metrics, read from the database at scrape time (so every process agrees): the
dashboard's figures for every entity via `portal.selectors.dashboard.compute` (windowed or status-bounded
queries on indexed columns, cheap on large tables: open reconciliation breaks and the close cycle time among
them), plus events and journals by status and the outbox backlog.
Gauges only: Prometheus derives rates itself, and the windowed gauges match what the dashboard shows, for
alerts."""
from django.db.models import Count
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from audit.models import AuditCheck
from billing_sync.models import Event
from ledger.models import Journal, Outbox
from portal.selectors import dashboard as dashboard_selectors


def _gauge(name: str, documentation: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value or 0))


class _TieoutCollector:
    def collect(self):
        events = GaugeMetricFamily("tieout_events", "Events by status", labels=["status"])
        for row in Event.objects.values("status").annotate(n=Count("id")).order_by():
            events.add_metric([row["status"]], row["n"])
        yield events
        journals = GaugeMetricFamily("tieout_journals", "Journals by status", labels=["status"])
        for row in Journal.objects.values("status").annotate(n=Count("id")).order_by():
            journals.add_metric([row["status"]], row["n"])
        yield journals
        yield _gauge("tieout_outbox_pending", "Outbox rows not yet handed to Celery",
                     Outbox.objects.filter(dispatched_at__isnull=True).count())

        figures = dashboard_selectors.compute(None, history=False)
        open_exc = figures["open_exceptions"]
        by_code = GaugeMetricFamily("tieout_open_exceptions", "Unresolved exceptions by code", labels=["code"])
        by_code_age = GaugeMetricFamily("tieout_open_exceptions_by_age",
                                        "Unresolved exceptions by code and age bucket", labels=["code", "age"])
        for row in open_exc["by_code"]:
            by_code.add_metric([row["code"]], row["count"])
            for cell in row["ages"]:
                by_code_age.add_metric([row["code"], cell["key"]], cell["count"])
        yield by_code
        yield by_code_age
        by_age = GaugeMetricFamily("tieout_open_exceptions_age", "Unresolved exceptions by age bucket",
                                   labels=["age"])
        for bucket in open_exc["by_age"]:
            by_age.add_metric([bucket["key"]], bucket["count"])
        yield by_age

        retries = figures["retries"]
        yield _gauge("tieout_open_exception_retries", "Retries so far of the unresolved exceptions (sum)",
                     retries["open_exception_retries"])
        yield _gauge("tieout_journals_retried", "Journals that needed more than one ERP attempt",
                     retries["journals_retried"])
        yield _gauge("tieout_journals_retried_unposted", "Journals with more than one ERP attempt, not yet posted",
                     retries["journals_retried_unposted"])
        yield _gauge("tieout_erp_attempts_failed_24h", "ERP posting attempts that failed in the last 24 hours",
                     retries["erp_attempts_failed_24h"])

        latency = figures["latency"]
        quantiles = GaugeMetricFamily(
            "tieout_posting_latency_seconds",
            "Source-to-posted latency (event received to journal posted) over journals posted in the window",
            labels=["window", "quantile"])
        for window in ("1h", "24h"):
            for quantile, key in (("0.5", f"p50_{window}"), ("0.95", f"p95_{window}")):
                if latency[key] is not None:
                    quantiles.add_metric([window, quantile], float(latency[key]))
        yield quantiles
        posted = GaugeMetricFamily("tieout_posting_latency_journals", "Journals the latency quantiles are over",
                                   labels=["window"])
        posted.add_metric(["1h"], latency["posted_1h"])
        posted.add_metric(["24h"], latency["posted_24h"])
        yield posted

        yield _gauge("tieout_journals_posted_last_hour", "Journals posted in the last hour (throughput)",
                     figures["journals_posted_last_hour"])
        yield _gauge("tieout_events_received_last_hour", "Events received in the last hour",
                     figures["events_last_hour"])
        unposted = figures["unposted"]
        by_status = GaugeMetricFamily("tieout_unposted_journals", "Journals not yet posted, by status",
                                      labels=["status"])
        for status in dashboard_selectors.UNPOSTED_STATUSES:
            by_status.add_metric([status], unposted["by_status"].get(status, 0))
        yield by_status
        oldest = unposted["oldest"]
        yield _gauge("tieout_oldest_unposted_seconds", "Age of the oldest journal not yet posted",
                     oldest["age_seconds"] if oldest else 0.0)
        yield _gauge("tieout_pending_approvals", "Approvals waiting for a decision", figures["pending_approvals"])
        breaks = GaugeMetricFamily("tieout_reconciliation_open_breaks", "Open reconciliation breaks by code",
                                   labels=["code"])
        for row in figures["reconciliation"]["by_code"]:
            breaks.add_metric([row["code"]], row["count"])
        yield breaks
        cycle = figures["close"]["cycle"]
        close_cycle = GaugeMetricFamily("tieout_close_cycle_seconds",
                                        "Month end to close, over the periods closed among the last 7 months",
                                        labels=["quantile"])
        for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
            if cycle[key] is not None:
                close_cycle.add_metric([quantile], float(cycle[key]))
        yield close_cycle
        last_check = AuditCheck.objects.order_by("-at", "-id").values_list("ok", flat=True).first()
        if last_check is not None:  # 1: the last scheduled audit_verify passed; 0: the chain is broken
            yield GaugeMetricFamily("tieout_audit_chain_ok", "Last audit chain verification passed (1) or not (0)",
                                    value=1.0 if last_check else 0.0)


_registry = CollectorRegistry(auto_describe=False)
_registry.register(_TieoutCollector())


def metrics(request):
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
