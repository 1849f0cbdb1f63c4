"""The trace responses, typed: one DRF serializer per shape `portal.lineage` returns, so the API, the pages
and the OpenAPI schema (drf-spectacular) share one declaration. Fields only pass through values lineage
already wrote (ISO 8601 text, decimal money text, text ids), so bodies keep their exact bytes; field classes
add type and format to the schema. Field order is key order and every key must be declared (an undeclared one
would be dropped, caught by tests/portal/test_lineage.py). Component names start or end with `Trace`."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


# ------------------------------------------------------------------------------ pass-through field types
@extend_schema_field(OpenApiTypes.DATETIME)
class Timestamp(serializers.CharField):
    """An RFC 3339 time, as lineage wrote it."""


@extend_schema_field(OpenApiTypes.DATE)
class Day(serializers.CharField):
    """A calendar date (YYYY-MM-DD)."""


@extend_schema_field(OpenApiTypes.UUID)
class Id(serializers.CharField):
    """A UUID, as text."""


@extend_schema_field({"type": "string", "format": "decimal", "example": "100.00"})
class Money(serializers.CharField):
    """An amount as decimal text at the currency's minor units (never a float)."""


@extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
class Headers(serializers.JSONField):
    """The request headers kept with a receipt, as received."""


@extend_schema_field({"type": "array", "items": {"type": "object", "properties": {
    "jurisdiction": {"type": "string"}, "rate": {"type": "string"}, "amount": {"type": "string"}}}})
class Taxes(serializers.JSONField):
    """An invoice line's taxes as stored (decimal text), keys in the database's order."""


def _nullable(field_class, **kwargs):
    return field_class(allow_null=True, **kwargs)


# ---------------------------------------------------------------------------------------- shared steps
class TraceAuditEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    at = Timestamp()
    actor = serializers.CharField()
    action = serializers.CharField()
    object_type = serializers.CharField()
    object_id = serializers.CharField()
    entry_hash = serializers.CharField(help_text="SHA-256 of the entry's canonical content")
    chain_seq = serializers.IntegerField(allow_null=True, help_text="position in the hash chain; null until sealed")
    chain_hash = _nullable(serializers.CharField, help_text="the chain hash at chain_seq; null until sealed")
    correlation_id = serializers.CharField(allow_blank=True)


class TraceJournalLineSerializer(serializers.Serializer):
    account = serializers.CharField()
    debit = Money()
    credit = Money()
    customer_id = _nullable(serializers.CharField)
    invoice_id = _nullable(serializers.CharField)
    jurisdiction = _nullable(serializers.CharField)


class TraceErpAttemptSerializer(serializers.Serializer):
    at = Timestamp()
    finished_at = _nullable(Timestamp)
    connector = serializers.CharField()
    outcome = serializers.CharField()
    erp_document_ref = _nullable(serializers.CharField)
    message = serializers.CharField(allow_blank=True)


class TraceJournalSerializer(serializers.Serializer):
    id = Id()
    kind = serializers.CharField()
    status = serializers.CharField()
    accounting_date = Day()
    reverses = _nullable(Id, help_text="the journal this one reverses")
    erp_document_ref = _nullable(serializers.CharField)
    posted_at = _nullable(Timestamp)
    correlation_id = serializers.CharField(allow_blank=True)
    lines = TraceJournalLineSerializer(many=True)
    erp_attempts = TraceErpAttemptSerializer(many=True)


class TraceExceptionSerializer(serializers.Serializer):
    id = Id()
    code = serializers.CharField()
    status = serializers.CharField()
    message = serializers.CharField(allow_blank=True)
    owner = _nullable(serializers.CharField)
    created_at = Timestamp()
    resolved_at = _nullable(Timestamp)
    resolved_by = _nullable(serializers.CharField)
    resolution = _nullable(serializers.CharField)


class TraceDecisionSerializer(serializers.Serializer):
    user = serializers.CharField()
    decision = serializers.CharField()
    comment = serializers.CharField(allow_blank=True)
    at = Timestamp()


class TraceCallbackSerializer(serializers.Serializer):
    id = Id()
    source_system = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = _nullable(serializers.CharField)
    created_at = Timestamp()
    delivered_at = _nullable(Timestamp)


class TraceCanonicalChangeSerializer(serializers.Serializer):
    document = serializers.CharField()
    id = serializers.CharField()
    version = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField()
    at = Timestamp()


# ----------------------------------------------------------------- the event trace (from what arrived)
class TraceExceptionBriefSerializer(serializers.Serializer):
    id = Id()
    code = serializers.CharField()
    status = serializers.CharField()
    message = serializers.CharField(allow_blank=True)
    owner = _nullable(serializers.CharField)


class TraceEventLinksSerializer(serializers.Serializer):
    trace = serializers.CharField()


class TraceEventResourceSerializer(serializers.Serializer):
    """The event resource (GET /api/v1/events/{id})."""

    id = Id()
    source_system = serializers.CharField()
    event_id = serializers.CharField()
    type = serializers.CharField()
    entity = serializers.CharField()
    status = serializers.CharField()
    correlation_id = serializers.CharField(allow_blank=True)
    received_at = Timestamp()
    journal_ids = serializers.ListField(child=Id())
    exception = TraceExceptionBriefSerializer(allow_null=True, help_text="the event's latest exception")
    links = TraceEventLinksSerializer()


class TraceReceiptSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    received_at = Timestamp()
    endpoint = serializers.CharField()
    client = serializers.CharField(allow_blank=True)
    body_sha256 = serializers.CharField(help_text="SHA-256 of the raw body received")
    headers = Headers()
    outcome = serializers.CharField()
    status_code = serializers.IntegerField()
    size = serializers.IntegerField(help_text="bytes received")


class TraceReceiptArchiveSerializer(serializers.Serializer):
    """Where an archived receipt's bytes went: retention moved its month's partition into this signed pack."""

    receipt_id = serializers.IntegerField()
    pack = serializers.CharField(help_text="the pack's file name (tieout-retention/1)")
    location = serializers.CharField(help_text="the directory the pack was written to and verified in")
    sha256 = serializers.CharField(help_text="SHA-256 of the pack file as verified")
    month = serializers.CharField()
    partition = serializers.CharField()
    rows = serializers.IntegerField()
    archived_at = Timestamp()


class TraceValidationSerializer(serializers.Serializer):
    result = serializers.CharField()
    schema_version = _nullable(serializers.CharField)


class TraceEventApprovalSerializer(serializers.Serializer):
    id = Id()
    kind = serializers.CharField()
    status = serializers.CharField()
    required_approvals = serializers.IntegerField()
    requested_by = serializers.CharField()
    decisions = TraceDecisionSerializer(many=True)


class TraceEventInvoiceSerializer(serializers.Serializer):
    invoice_id = serializers.CharField()
    open_amount = Money(help_text="open as billing sees it")
    ledger_open_amount = Money(help_text="the invoice's receivable balance in the ledger")
    ties_out = serializers.BooleanField()


class TraceEventReconciliationSerializer(serializers.Serializer):
    invoices = TraceEventInvoiceSerializer(many=True)


class EventTraceSerializer(serializers.Serializer):
    """Everything that happened to one event, in order (GET /api/v1/events/{id}/trace)."""

    event = TraceEventResourceSerializer()
    receipt = TraceReceiptSerializer(allow_null=True)
    receipt_archive = TraceReceiptArchiveSerializer(
        allow_null=True, help_text="set when the receipt's month was archived by retention (`receipt` is then "
                                   "null): the pack that holds its bytes")
    payload_sha256 = serializers.CharField()
    validation = TraceValidationSerializer()
    canonical_changes = TraceCanonicalChangeSerializer(many=True)
    approvals = TraceEventApprovalSerializer(many=True)
    journals = TraceJournalSerializer(many=True)
    exceptions = TraceExceptionSerializer(many=True)
    reconciliation = TraceEventReconciliationSerializer()
    callbacks = TraceCallbackSerializer(many=True)
    audit = TraceAuditEntrySerializer(many=True)


class ExceptionTraceSerializer(EventTraceSerializer):
    """An exception's event trace, or, for an exception without an event, its journal and entries (the
    event's parts then null or empty)."""

    event = TraceEventResourceSerializer(allow_null=True)
    payload_sha256 = _nullable(serializers.CharField)
    validation = TraceValidationSerializer(allow_null=True)
    exception = TraceExceptionSerializer()


# ------------------------------------------- journal, invoice and ERP-reference traces (both ways)
class TraceEventStepSerializer(serializers.Serializer):
    id = Id()
    source_system = serializers.CharField()
    event_id = serializers.CharField()
    type = serializers.CharField()
    entity = serializers.CharField()
    status = serializers.CharField()
    received_at = Timestamp()
    payload_sha256 = serializers.CharField()
    receipt_sha256 = _nullable(serializers.CharField)
    correlation_id = serializers.CharField(allow_blank=True)
    canonical_changes = TraceCanonicalChangeSerializer(many=True)
    audit = TraceAuditEntrySerializer(many=True)


class TraceReconciliationStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["unreconciled", "matched", "break"],
                                     help_text="the last reconciliation run's verdict on the object")
    checked_at = _nullable(Timestamp)
    run = _nullable(Id)


class TraceJournalStepSerializer(TraceJournalSerializer):
    entity = serializers.CharField()
    event_id = _nullable(Id)
    source_system = _nullable(serializers.CharField)
    document_type = _nullable(serializers.CharField)
    document_id = _nullable(serializers.CharField)
    document_version = serializers.IntegerField(allow_null=True)
    description = serializers.CharField(allow_blank=True)
    created_by = _nullable(serializers.CharField)
    erp_batch = _nullable(Id)
    invoice_ids = serializers.ListField(child=serializers.CharField())
    reconciliation = TraceReconciliationStatusSerializer()
    audit = TraceAuditEntrySerializer(many=True)


class TraceApprovalStepSerializer(serializers.Serializer):
    id = Id()
    kind = serializers.CharField()
    status = serializers.CharField()
    required_approvals = serializers.IntegerField()
    requested_by = serializers.CharField()
    journal_id = _nullable(Id)
    event_id = _nullable(Id)
    decisions = TraceDecisionSerializer(many=True)
    audit = TraceAuditEntrySerializer(many=True)


class TraceExceptionStepSerializer(TraceExceptionSerializer):
    event_id = _nullable(Id)
    journal_id = _nullable(Id)
    entity = _nullable(serializers.CharField)
    audit = TraceAuditEntrySerializer(many=True)


class TraceInvoiceReconciliationSerializer(serializers.Serializer):
    source_system = serializers.CharField()
    invoice_id = serializers.CharField()
    entity = serializers.CharField()
    open_amount = Money(help_text="open as billing sees it")
    ledger_open_amount = Money(help_text="the invoice's receivable balance in the ledger")
    currency = serializers.CharField()
    ties_out = serializers.BooleanField()
    status = TraceReconciliationStatusSerializer()


class TraceReconciliationSerializer(serializers.Serializer):
    invoices = TraceInvoiceReconciliationSerializer(many=True)


class _CommonTraceSerializer(serializers.Serializer):
    """What journal, invoice and ERP-reference traces share; every step carries its own audit entries,
    and `audit` lists them all once, in id order."""

    events = TraceEventStepSerializer(many=True)
    journals = TraceJournalStepSerializer(many=True)
    approvals = TraceApprovalStepSerializer(many=True)
    exceptions = TraceExceptionStepSerializer(many=True)
    reconciliation = TraceReconciliationSerializer()
    callbacks = TraceCallbackSerializer(many=True)
    audit = TraceAuditEntrySerializer(many=True)


class TraceErpBatchSerializer(serializers.Serializer):
    id = Id()
    status = serializers.CharField()
    accounting_date = Day()
    journal_count = serializers.IntegerField()
    erp_document_ref = _nullable(serializers.CharField)
    posted_at = _nullable(Timestamp)
    audit = TraceAuditEntrySerializer(many=True)


class TraceRelatedJournalSerializer(serializers.Serializer):
    id = Id()
    kind = serializers.CharField()
    status = serializers.CharField()
    accounting_date = Day()
    erp_document_ref = _nullable(serializers.CharField)
    event_id = _nullable(Id)
    relation = serializers.CharField(help_text="reverses, reversed_by or same_invoice")


class JournalTraceSerializer(_CommonTraceSerializer):
    """One journal both ways (GET /api/v1/journals/{id}/trace)."""

    journal = TraceJournalStepSerializer()
    erp_batch = TraceErpBatchSerializer(allow_null=True)
    related_journals = TraceRelatedJournalSerializer(many=True)


class ErpReferenceTraceSerializer(_CommonTraceSerializer):
    """An ERP document reference back to what produced it (GET /api/v1/trace)."""

    erp_document_ref = serializers.CharField()
    entity = serializers.CharField()
    erp_batch = TraceErpBatchSerializer(allow_null=True)


class TraceInvoiceLineSerializer(serializers.Serializer):
    line_id = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    amount = Money()
    revenue_account = _nullable(serializers.CharField)
    taxes = Taxes()


class TraceInvoiceSerializer(serializers.Serializer):
    """The canonical invoice (GET /api/v1/invoices/{source_system}/{invoice_id}), its audit entries and
    what finance calls its state."""

    source_system = serializers.CharField()
    invoice_id = serializers.CharField()
    number = serializers.CharField(allow_blank=True)
    entity = serializers.CharField()
    customer_id = serializers.CharField()
    currency = serializers.CharField()
    issue_date = Day()
    due_date = Day()
    status = serializers.CharField()
    version = serializers.IntegerField()
    subtotal = Money()
    tax_total = Money()
    total = Money()
    applied_total = Money()
    credited_total = Money()
    written_off_total = Money()
    refunded_total = Money()
    open_amount = Money()
    ledger_open_amount = Money()
    reconciliation = TraceReconciliationStatusSerializer()
    lines = TraceInvoiceLineSerializer(many=True)
    audit = TraceAuditEntrySerializer(many=True)
    settlement = serializers.CharField(help_text="paid, partially_paid, open, overdue, voided, written_off or "
                                                 "credited")
    settlement_label = serializers.CharField()


class TraceFieldChangeSerializer(serializers.Serializer):
    field = serializers.CharField()
    old = _nullable(serializers.CharField)
    new = _nullable(serializers.CharField)


class TraceVersionSerializer(serializers.Serializer):
    history_id = serializers.IntegerField()
    at = Timestamp()
    type = serializers.CharField(help_text="created, changed or deleted")
    user = _nullable(serializers.CharField)
    version = serializers.IntegerField(allow_null=True)
    changes = TraceFieldChangeSerializer(many=True)


class TraceAllocationSerializer(serializers.Serializer):
    payment_id = serializers.CharField()
    amount = Money()
    event_id = Id()
    at = Timestamp()


class TracePaymentSerializer(serializers.Serializer):
    payment_id = serializers.CharField()
    amount = Money()
    received_at = Timestamp()
    method = serializers.CharField(allow_blank=True)
    audit = TraceAuditEntrySerializer(many=True)


class TraceCreditNoteSerializer(serializers.Serializer):
    credit_note_id = serializers.CharField()
    amount = Money()
    tax_amount = Money()
    status = serializers.CharField()
    event_id = Id()
    audit = TraceAuditEntrySerializer(many=True)


class TraceWriteOffSerializer(serializers.Serializer):
    write_off_id = serializers.CharField()
    amount = Money()
    status = serializers.CharField()
    event_id = Id()
    audit = TraceAuditEntrySerializer(many=True)


class TraceRefundSerializer(serializers.Serializer):
    refund_id = serializers.CharField()
    amount = Money()
    event_id = Id()
    audit = TraceAuditEntrySerializer(many=True)


class InvoiceTraceSerializer(_CommonTraceSerializer):
    """Everything that touched one canonical invoice (GET /api/v1/invoices/{source_system}/{invoice_id}/trace)."""

    invoice = TraceInvoiceSerializer()
    versions = TraceVersionSerializer(many=True)
    allocations = TraceAllocationSerializer(many=True)
    payments = TracePaymentSerializer(many=True)
    credit_notes = TraceCreditNoteSerializer(many=True)
    write_offs = TraceWriteOffSerializer(many=True)
    refunds = TraceRefundSerializer(many=True)
