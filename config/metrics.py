"""Prometheus metrics at /metrics, read from the database at scrape time (so every process agrees).

The figures are the ones operations watch: events by status, journals by status, open exceptions by
code, the outbox backlog and the age of the oldest unposted journal.
"""
from django.db.models import Count, Min
from django.http import HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily


class _TieoutCollector:
    def collect(self):
        from billing_sync.models import Event
        from exceptions_queue.models import ExceptionRecord
        from ledger.models import Journal, Outbox

        events = GaugeMetricFamily("tieout_events", "Events by status", labels=["status"])
        for row in Event.objects.values("status").annotate(n=Count("id")):
            events.add_metric([row["status"]], row["n"])
        yield events
        journals = GaugeMetricFamily("tieout_journals", "Journals by status", labels=["status"])
        for row in Journal.objects.values("status").annotate(n=Count("id")):
            journals.add_metric([row["status"]], row["n"])
        yield journals
        exceptions = GaugeMetricFamily("tieout_open_exceptions", "Unresolved exceptions by code", labels=["code"])
        for row in ExceptionRecord.objects.exclude(status="resolved").values("code").annotate(n=Count("id")):
            exceptions.add_metric([row["code"]], row["n"])
        yield exceptions
        yield GaugeMetricFamily("tieout_outbox_pending", "Outbox rows not yet handed to Celery",
                                value=Outbox.objects.filter(dispatched_at__isnull=True).count())
        oldest = Journal.objects.filter(status__in=["ready", "posting", "failed"]).aggregate(m=Min("created_at"))["m"]
        age = (timezone.now() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily("tieout_oldest_unposted_seconds", "Age of the oldest journal not yet posted",
                                value=age)
        from audit.models import AuditCheck

        last_check = AuditCheck.objects.order_by("-at", "-id").values_list("ok", flat=True).first()
        if last_check is not None:  # 1: the last scheduled audit_verify passed; 0: the chain is broken
            yield GaugeMetricFamily("tieout_audit_chain_ok", "Last audit chain verification passed (1) or not (0)",
                                    value=1.0 if last_check else 0.0)


_registry = CollectorRegistry(auto_describe=False)
_registry.register(_TieoutCollector())


def metrics(request):
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
