"""API representations of journals and the trial balance (money as strings in the entity currency)."""
from rest_framework import serializers

from ledger.models import Journal
from ledger.selectors import journal_reconciliation
from config.money import fmt


class JournalSerializer(serializers.ModelSerializer):
    entity = serializers.CharField(source="entity.code")
    event = serializers.UUIDField(source="event_id", allow_null=True)
    reverses = serializers.UUIDField(source="reverses_id", allow_null=True)
    lines = serializers.SerializerMethodField()
    reconciliation = serializers.SerializerMethodField()

    class Meta:
        model = Journal
        fields = ["id", "entity", "status", "accounting_date", "event", "reverses", "kind", "description",
                  "erp_document_ref", "posted_at", "correlation_id", "lines", "reconciliation"]

    def get_reconciliation(self, journal) -> dict:
        """`{"status": unreconciled | matched | break, "checked_at", "run"}`, read once for a whole page."""
        cache = self.context.setdefault("_reconciliation", {})
        if journal.pk not in cache:
            page = getattr(self.parent, "instance", None) or [journal]
            cache.update(journal_reconciliation([j.pk for j in page]))
        return cache[journal.pk]

    def get_lines(self, journal) -> list[dict]:
        currency = journal.entity.currency
        return [{"account": line.account.code, "debit": fmt(line.debit, currency), "credit": fmt(line.credit, currency),
                 "customer_id": line.customer_id or None, "invoice_id": line.invoice_id or None,
                 "payment_id": line.payment_id or None, "jurisdiction": line.jurisdiction or None}
                for line in journal.lines.all()]


def trial_balance_body(tb: dict) -> dict:
    currency = tb["entity"].currency
    return {
        "entity": tb["entity"].code, "currency": currency,
        "as_of": tb["as_of"].isoformat() if tb["as_of"] else None,
        "accounts": [{"code": a["code"], "name": a["name"], "debit": fmt(a["debit"], currency),
                      "credit": fmt(a["credit"], currency), "balance": fmt(a["balance"], currency)}
                     for a in tb["accounts"]],
        "total_debit": fmt(tb["total_debit"], currency), "total_credit": fmt(tb["total_credit"], currency),
    }
