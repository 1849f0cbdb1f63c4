"""Receipts, events and the canonical billing documents they maintain. `Receipt` keeps every request body as
received (bytes and SHA-256), whatever the answer; `Event` is the unique identity `(source_system, event_id)`
and the first answer given for it, so a replay returns the identical body. Canonical documents (customers,
invoices, payments, refunds, credit notes, write-offs) are keyed by `(source_system, <document>_id)`,
versioned with django-simple-history, with running totals kept honest by check constraints (an invoice's open
amount never goes below 0)."""
import uuid
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from config.history import HistoricalRecords

MONEY = {"max_digits": 20, "decimal_places": 4}


class ApiToken(models.Model):
    """A bearer token; only its SHA-256 is stored. The owner's role (group) decides what it may do.

    A token may be bound to source systems and entities (`source_systems`, `entities`): it may then send
    only events whose envelope names one of each. NULL means unbound (any), which is what every token
    issued before bindings existed is; an empty list would allow nothing, so the services never store one.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    name = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Written at most once a minute per token (authentication), not on every request.
    last_used_at = models.DateTimeField(null=True, blank=True)
    source_systems = ArrayField(models.CharField(max_length=100), null=True, blank=True)
    entities = ArrayField(models.CharField(max_length=20), null=True, blank=True)

    def __str__(self):
        return f"{self.prefix}… ({self.user})"

    @property
    def is_bound(self) -> bool:
        return self.source_systems is not None or self.entities is not None

    def allows(self, source_system, entity) -> bool:
        """May this token send an event of `source_system` for `entity`?"""
        return ((self.source_systems is None or source_system in self.source_systems)
                and (self.entities is None or entity in self.entities))

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class Receipt(models.Model):
    class Outcome(models.TextChoices):
        ACCEPTED = "accepted"
        REPLAYED = "replayed"
        CONFLICT = "conflict"
        INVALID = "invalid"
        UNAUTHORIZED = "unauthorized"
        FORBIDDEN = "forbidden"
        BATCH = "batch"  # a batch body: per-event outcomes live on the events

    id = models.BigAutoField(primary_key=True)
    received_at = models.DateTimeField(default=timezone.now)
    endpoint = models.CharField(max_length=20)
    client = models.CharField(max_length=150, blank=True, default="")
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    headers = models.JSONField(default=dict)
    body = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField()
    correlation_id = models.CharField(max_length=128, blank=True, default="")
    detail = models.JSONField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["received_at"], name="receipt_received_idx")]


class Event(models.Model):
    class Status(models.TextChoices):
        ACCEPTED = "accepted"
        PROCESSED = "processed"
        PENDING_APPROVAL = "pending_approval"
        POSTED = "posted"
        EXCEPTION = "exception"
        REJECTED = "rejected"
        IGNORED = "ignored"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source_system = models.CharField(max_length=100)
    event_id = models.CharField(max_length=200)
    type = models.CharField(max_length=40)
    entity_code = models.CharField(max_length=20)
    occurred_at = models.DateTimeField()
    payload = models.JSONField()
    payload_hash = models.CharField(max_length=64)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACCEPTED)
    correlation_id = models.CharField(max_length=128, blank=True, default="")
    received_at = models.DateTimeField(default=timezone.now)
    # Foreign keys to events and receipts are enforced against their key tables (billing_sync_eventkey,
    # billing_sync_receiptkey; migrations 0013 and 0014): both tables are partitioned by month of
    # `received_at`, and PostgreSQL cannot reference their id alone on a partitioned table.
    receipt = models.ForeignKey(Receipt, null=True, blank=True, on_delete=models.PROTECT, related_name="events",
                                db_constraint=False)
    sent_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                related_name="+")
    response_body = models.TextField(help_text="The first answer, byte for byte, replayed to duplicates.")
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Acceptance order and the documents touched (billing_sync/ordering.py): events sharing a key are
    # processed in `seq` order. The sequence is the database's, so every writer numbers alike.
    seq = models.BigIntegerField(editable=False, db_default=models.Func(
        template="nextval('billing_sync_event_seq')", output_field=models.BigIntegerField()))
    order_keys = ArrayField(models.TextField(), default=list, blank=True, db_default=models.Value([], ArrayField(
        models.TextField())))
    # The earlier event this one last waited behind (set when it was held, kept after as its history).
    held_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                db_index=False, db_constraint=False)

    class Meta:
        # The identity `(source_system, event_id)`, `seq` and `(source_system, idempotency_key)` stay unique
        # in the key table billing_sync_eventkey under these constraints' names (event_unique_identity,
        # event_unique_seq, event_unique_idem_key; migration 0013): a unique constraint on the partitioned
        # table would have to include `received_at`, and so would not be one.
        indexes = [
            models.Index(fields=["status", "received_at"], name="event_status_idx"),
            models.Index(fields=["type"], name="event_type_idx"),
            # Dashboard windows (events per hour/day) are index-only scans: status and entity ride along.
            models.Index(fields=["received_at"], include=["status", "entity_code"], name="event_received_idx"),
            models.Index(fields=["event_id"], name="event_event_id_idx"),  # admin/support search by id
            # What the unique constraints' indexes served on this table before it was partitioned (0013):
            # look-ups by identity and Idempotency-Key, and the ordering's reads by `seq`.
            models.Index(fields=["source_system", "event_id"], name="event_identity_idx"),
            models.Index(fields=["seq"], name="event_seq_idx"),
            models.Index(fields=["source_system", "idempotency_key"], name="event_idem_key_idx",
                         condition=Q(idempotency_key__isnull=False)),
            # Only pending events: the hold check and the wake-up read the few events still in play. Without
            # GIN's pending list (fastupdate): every event processed reads this index once or more, and a
            # backlog's new entries waiting in that list are scanned one by one by every read until a vacuum
            # merges them (at a month-end backlog, the hold check cost grew with the backlog).
            GinIndex(fields=["order_keys"], name="event_pending_keys_idx", fastupdate=False,
                     condition=Q(status__in=["accepted", "exception"])),
            # The ready events, oldest first, for a task filling its chunk (`processing._fill`): read in order and
            # stopped at the chunk's room. Without it, at a backlog the fill sorted every accepted event (row and
            # payload, on disk: ~90 ms at 18,000) for each chunk, worse while the burst's statistics were stale.
            models.Index(fields=["received_at", "seq"], name="event_ready_idx",
                         condition=Q(status="accepted", held_by__isnull=True)),
        ]

    def __str__(self):
        return f"{self.source_system}/{self.event_id} {self.type} ({self.status})"


class ReceiptKey(models.Model):
    """The id of every receipt ever stored, with its month: what foreign keys to receipts point at, since the
    partitioned `billing_sync_receipt` cannot be referenced by id alone (migration 0013). Written by the
    receipts' AFTER INSERT statement trigger, never by code; it outlives the receipt's archived partition."""

    id = models.BigIntegerField(primary_key=True)
    received_at = models.DateTimeField()

    class Meta:
        db_table = "billing_sync_receiptkey"


class EventKey(models.Model):
    """The identity of every event ever accepted: its id (what foreign keys to events point at), its unique
    `(source_system, event_id)`, `seq` and Idempotency-Key, and its month (migration 0013). Written by the
    events' BEFORE INSERT trigger, never by code; it outlives the event's archived partition, so an archived
    event's identity stays taken and its trace can say where its bytes went."""

    id = models.UUIDField(primary_key=True)
    received_at = models.DateTimeField()
    source_system = models.CharField(max_length=100)
    event_id = models.CharField(max_length=200)
    idempotency_key = models.CharField(max_length=200, null=True)
    seq = models.BigIntegerField()

    class Meta:
        db_table = "billing_sync_eventkey"
        constraints = [
            models.UniqueConstraint(fields=["source_system", "event_id"], name="event_unique_identity"),
            models.UniqueConstraint(fields=["seq"], name="event_unique_seq"),
            models.UniqueConstraint(fields=["source_system", "idempotency_key"], name="event_unique_idem_key",
                                    condition=Q(idempotency_key__isnull=False)),
        ]


class CanonicalChange(models.Model):
    """What an event did to a canonical document: created, updated, applied, or stale (ignored)."""

    class Outcome(models.TextChoices):
        CREATED = "created"
        UPDATED = "updated"
        APPLIED = "applied"
        STALE = "stale"

    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="changes", db_constraint=False)
    document_type = models.CharField(max_length=30)
    document_id = models.CharField(max_length=200)
    version = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event", "document_type", "document_id"],
                                               name="change_unique_per_event")]


class Customer(models.Model):
    source_system = models.CharField(max_length=100)
    customer_id = models.CharField(max_length=200)
    entity_code = models.CharField(max_length=20, blank=True, default="")
    name = models.CharField(max_length=300)
    email = models.CharField(max_length=300, blank=True, default="")
    country = models.CharField(max_length=2, blank=True, default="")
    version = models.PositiveIntegerField()
    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source_system", "customer_id"], name="customer_unique")]
        indexes = [models.Index(fields=["customer_id"], name="customer_id_idx")]

    def __str__(self):
        return f"{self.customer_id} {self.name}"


class Invoice(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        VOIDED = "voided"

    source_system = models.CharField(max_length=100)
    invoice_id = models.CharField(max_length=200)
    entity = models.ForeignKey("ledger.Entity", on_delete=models.PROTECT, related_name="invoices")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    number = models.CharField(max_length=100)
    currency = models.CharField(max_length=3)
    issue_date = models.DateField()
    due_date = models.DateField()
    subtotal = models.DecimalField(**MONEY)
    tax_total = models.DecimalField(**MONEY)
    total = models.DecimalField(**MONEY)
    version = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    # Running totals, maintained under the invoice's row lock by the services.
    applied_total = models.DecimalField(**MONEY, default=0)
    credited_total = models.DecimalField(**MONEY, default=0)
    written_off_total = models.DecimalField(**MONEY, default=0)
    refunded_total = models.DecimalField(**MONEY, default=0)
    current_journal = models.ForeignKey("ledger.Journal", null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source_system", "invoice_id"], name="invoice_unique"),
            models.CheckConstraint(condition=Q(total=F("subtotal") + F("tax_total")), name="invoice_total_sum"),
            models.CheckConstraint(
                condition=Q(applied_total__gte=0, credited_total__gte=0, written_off_total__gte=0,
                            refunded_total__gte=0),
                name="invoice_totals_non_negative",
            ),
            # Payments and write-offs never take the invoice below zero (refunds naming it give room back);
            # credit notes are capped at the total on their own: a credit on a paid invoice is a customer
            # credit balance (negative open amount) until the refund that usually follows.
            models.CheckConstraint(
                condition=Q(status="voided") | Q(
                    total__gte=F("applied_total") + F("written_off_total") - F("refunded_total")),
                name="invoice_applications_capped",
            ),
            models.CheckConstraint(condition=Q(total__gte=F("credited_total")), name="invoice_credits_capped"),
        ]
        indexes = [
            models.Index(fields=["invoice_id"], name="invoice_id_idx"),
            # What the receivables agings read of each open invoice, looked up by its key: with these columns
            # in the index the look-up never visits the table (migration 0011).
            models.Index(fields=["source_system", "invoice_id"], include=["entity", "due_date", "customer"],
                         name="invoice_aging_idx"),
        ]

    def __str__(self):
        return f"{self.number} ({self.invoice_id})"

    @property
    def open_amount(self):
        if self.status == self.Status.VOIDED:
            return Decimal("0")
        return self.total - self.applied_total - self.credited_total - self.written_off_total + self.refunded_total

    # What finance calls the invoice on the pages (the stored `status` only knows open / voided, and the API
    # keeps it): derived from the amounts here, in one place, for every page that shows an invoice.
    SETTLEMENT_LABELS = {"paid": "paid", "partially_paid": "partially paid", "open": "open", "overdue": "overdue",
                         "voided": "voided", "written_off": "written off", "credited": "credited"}

    def settlement_on(self, today) -> str:
        """paid / partially_paid / open / overdue / voided / written_off / credited, as of the date `today`.

        Nothing open: written off if a write-off closed it, credited if credit notes did (or left a credit
        balance), else paid. Something open: overdue once past the due date, partially paid if some cash
        stayed on it, else open.
        """
        if self.status == self.Status.VOIDED:
            return "voided"
        open_amount = self.open_amount
        cash = self.applied_total - self.refunded_total
        if open_amount <= 0:
            if self.written_off_total > 0:
                return "written_off"
            if self.credited_total > 0 and (open_amount < 0 or cash < self.total):
                return "credited"
            return "paid"
        if self.due_date < today:
            return "overdue"
        return "partially_paid" if cash > 0 else "open"

    @property
    def settlement(self) -> str:
        return self.settlement_on(timezone.localdate())

    @property
    def settlement_label(self) -> str:
        return self.SETTLEMENT_LABELS[self.settlement]


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    line_id = models.CharField(max_length=200)
    description = models.CharField(max_length=500, blank=True, default="")
    amount = models.DecimalField(**MONEY)
    revenue_account = models.CharField(max_length=30, blank=True, default="")
    taxes = models.JSONField(default=list)  # [{"jurisdiction", "rate", "amount"}] as strings
    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["invoice", "line_id"], name="invoice_line_unique")]


class Payment(models.Model):
    source_system = models.CharField(max_length=100)
    payment_id = models.CharField(max_length=200)
    entity = models.ForeignKey("ledger.Entity", on_delete=models.PROTECT, related_name="payments")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="payments")
    currency = models.CharField(max_length=3)
    amount = models.DecimalField(**MONEY)
    fee = models.DecimalField(**MONEY, default=0)
    received_at = models.DateTimeField()
    method = models.CharField(max_length=50)
    allocated_total = models.DecimalField(**MONEY, default=0)
    refunded_total = models.DecimalField(**MONEY, default=0)
    refunded_unapplied_total = models.DecimalField(**MONEY, default=0)
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source_system", "payment_id"], name="payment_unique"),
            models.CheckConstraint(condition=Q(amount__gt=0, fee__gte=0), name="payment_amount_positive"),
            models.CheckConstraint(condition=Q(amount__gte=F("allocated_total") + F("refunded_unapplied_total")),
                                   name="payment_unapplied_non_negative"),
            models.CheckConstraint(condition=Q(amount__gte=F("refunded_total")), name="payment_refunds_capped"),
        ]
        indexes = [models.Index(fields=["payment_id"], name="payment_id_idx")]

    @property
    def unapplied_amount(self):
        return self.amount - self.allocated_total - self.refunded_unapplied_total


class PaymentAllocation(models.Model):
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="allocations")
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="allocations")
    amount = models.DecimalField(**MONEY)
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="allocation_positive")]


class Refund(models.Model):
    source_system = models.CharField(max_length=100)
    refund_id = models.CharField(max_length=200)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    invoice = models.ForeignKey(Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="refunds")
    currency = models.CharField(max_length=3)
    amount = models.DecimalField(**MONEY)
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source_system", "refund_id"], name="refund_unique"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_positive"),
        ]


class ApprovalStatus(models.TextChoices):
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    REJECTED = "rejected"


class CreditNote(models.Model):
    source_system = models.CharField(max_length=100)
    credit_note_id = models.CharField(max_length=200)
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    currency = models.CharField(max_length=3)
    amount = models.DecimalField(**MONEY)
    tax_amount = models.DecimalField(**MONEY, default=0)
    taxes = models.JSONField(default=list)
    reason = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=20, choices=ApprovalStatus.choices)
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source_system", "credit_note_id"], name="credit_note_unique"),
            models.CheckConstraint(condition=Q(amount__gt=0, tax_amount__gte=0), name="credit_note_positive"),
        ]

    @property
    def gross(self):
        return self.amount + self.tax_amount


class WriteOff(models.Model):
    source_system = models.CharField(max_length=100)
    write_off_id = models.CharField(max_length=200)
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="write_offs")
    currency = models.CharField(max_length=3)
    amount = models.DecimalField(**MONEY)
    reason = models.CharField(max_length=500, blank=True, default="")
    status = models.CharField(max_length=20, choices=ApprovalStatus.choices)
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source_system", "write_off_id"], name="write_off_unique"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="write_off_positive"),
        ]


class SourceSystem(models.Model):
    """A system that sends us events (`Event.source_system` = `name`) and wants their status back.

    Only the *name* of the environment variable holding the Standard Webhooks secret (`whsec_<base64>`)
    is stored: secrets live in the environment, never in the database, the audit log or the output.
    """

    name = models.CharField(max_length=100, unique=True)
    callback_url = models.URLField(max_length=500, blank=True, default="")
    secret_env = models.CharField(max_length=100, blank=True, default="",
                                  help_text="Environment variable that holds the signing secret (whsec_...).")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    history = HistoricalRecords()

    def __str__(self):
        return self.name


class CallbackDelivery(models.Model):
    """One status message to one source system, and how delivering it went.

    The id is the Standard Webhooks `webhook-id`: the same on every attempt, so the receiver can drop
    duplicates. `payload` holds the exact bytes sent (fixed at the first attempt; every retry re-sends
    them, only the timestamp and signature headers change).
    """

    class Kind(models.TextChoices):
        POSTED = "event.posted"
        EXCEPTION = "event.exception"
        RESOLVED = "event.resolved"

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source_system = models.ForeignKey(SourceSystem, on_delete=models.PROTECT, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.PROTECT, related_name="callback_deliveries",
                              db_constraint=False)
    kind = models.CharField(max_length=30, choices=Kind.choices)
    payload = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The callback_failed exception that collects this delivery once it gave up (retry re-sends it).
    exception = models.ForeignKey("exceptions_queue.ExceptionRecord", null=True, blank=True,
                                  on_delete=models.PROTECT, related_name="callback_deliveries")

    class Meta:
        verbose_name_plural = "callback deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="callback_due_idx"),
                   models.Index(fields=["created_at"], name="callback_created_idx")]

    def __str__(self):
        return f"{self.kind} {self.event_id} ({self.status})"


class ReconciliationRun(models.Model):
    """One reconciliation of an entity over a date range (billing ↔ ledger ↔ ERP); immutable once finished.

    A database trigger refuses any change to a run that is no longer `running` and any delete, so the
    figures a run reported are the figures it found. `subject` narrows a run to one object (the "re-run for
    this object" action): `journal:<uuid>` or `<document_type>:<source_system>:<id>`.
    """

    class Status(models.TextChoices):
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"

    id = models.BigAutoField(primary_key=True)
    entity = models.ForeignKey("ledger.Entity", on_delete=models.PROTECT, related_name="reconciliation_runs")
    date_from = models.DateField()
    date_to = models.DateField()
    full = models.BooleanField(default=False)
    subject = models.CharField(max_length=300, blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    requested_by = models.CharField(max_length=150)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Incremental runs read back only what the ERP changed since this instant (the last run's start).
    erp_modified_since = models.DateTimeField(null=True, blank=True)
    matched = models.PositiveIntegerField(default=0)
    breaks = models.JSONField(default=dict, blank=True)  # {"<code>": n} found by this run
    resolved = models.PositiveIntegerField(default=0)
    erp_requests = models.PositiveIntegerField(default=0)
    erp_documents = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(date_from__lte=F("date_to")), name="recon_run_range"),
            models.CheckConstraint(condition=Q(status="running") | Q(finished_at__isnull=False),
                                   name="recon_run_finished_at"),
            # One run at a time per entity: a second one (a beat tick while a long run goes on, a double
            # click) is refused by the database, whichever process starts it.
            models.UniqueConstraint(fields=["entity"], name="recon_run_one_running_per_entity",
                                    condition=Q(status="running")),
        ]
        indexes = [models.Index(fields=["entity", "-started_at"], name="recon_run_entity_idx")]

    def __str__(self):
        return f"reconciliation run {self.pk} {self.entity_id} {self.date_from}..{self.date_to} ({self.status})"


class ReconciliationBreak(models.Model):
    """One discrepancy a run found, with the expected and actual value per side and the objects involved.

    `key` names the discrepancy independently of the run (code + objects), so a later run that finds the
    same thing updates the open break rather than opening a second one (one open break per key, enforced
    by a partial unique index), and a run that finds the object matched resolves it.
    """

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    class Code(models.TextChoices):
        MISSING_JOURNAL = "missing_journal"
        JOURNAL_AMOUNT_MISMATCH = "journal_amount_mismatch"
        LEDGER_OPEN_AMOUNT_MISMATCH = "ledger_open_amount_mismatch"
        AR_CONTROL_MISMATCH = "ar_control_mismatch"
        UNAPPLIED_CASH_MISMATCH = "unapplied_cash_mismatch"
        MISSING_IN_ERP = "missing_in_erp"
        ERP_DOCUMENT_CANCELLED = "erp_document_cancelled"
        ERP_AMOUNT_MISMATCH = "erp_amount_mismatch"
        ERP_DATE_MISMATCH = "erp_date_mismatch"
        UNEXPECTED_IN_ERP = "unexpected_in_erp"
        ERP_BALANCE_MISMATCH = "erp_balance_mismatch"

    id = models.BigAutoField(primary_key=True)
    key = models.CharField(max_length=400)
    code = models.CharField(max_length=40, choices=Code.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    entity = models.ForeignKey("ledger.Entity", on_delete=models.PROTECT, related_name="reconciliation_breaks")
    account = models.CharField(max_length=30, blank=True, default="")  # our account code
    period = models.CharField(max_length=7, blank=True, default="")  # YYYY-MM
    journal = models.ForeignKey("ledger.Journal", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="reconciliation_breaks")
    erp_document_ref = models.CharField(max_length=100, blank=True, default="")
    # The canonical document involved: `<document_type>:<source_system>:<id>` (e.g. invoice:billing-prod:in_1).
    document = models.CharField(max_length=300, blank=True, default="")
    expected = models.JSONField(default=dict, blank=True)
    actual = models.JSONField(default=dict, blank=True)
    opened_by_run = models.ForeignKey(ReconciliationRun, on_delete=models.PROTECT, related_name="opened_breaks")
    last_seen_run = models.ForeignKey(ReconciliationRun, on_delete=models.PROTECT, related_name="+")
    resolved_by_run = models.ForeignKey(ReconciliationRun, null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="resolved_breaks")
    opened_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, default="")
    resolution = models.TextField(blank=True, default="")
    # A controller accepted the difference (with `resolution` as the reason): a later run that finds the same
    # key with the same expected and actual values does not open it again.
    accepted_by = models.CharField(max_length=150, blank=True, default="")
    # The adjusting manual journal raised from this break (it waits for approval; a later run that finds the
    # object matched resolves the break).
    adjusting_journal = models.ForeignKey("ledger.Journal", null=True, blank=True, on_delete=models.PROTECT,
                                          related_name="+")
    exception = models.ForeignKey("exceptions_queue.ExceptionRecord", null=True, blank=True,
                                  on_delete=models.PROTECT, related_name="reconciliation_breaks")
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key"], name="recon_break_one_open_per_key", condition=Q(status="open")),
            models.CheckConstraint(condition=Q(status="open") | (Q(resolved_at__isnull=False) & ~Q(resolution="")),
                                   name="recon_break_resolution_required"),
        ]
        indexes = [
            models.Index(fields=["entity", "status", "code"], name="recon_break_entity_idx"),
            models.Index(fields=["document"], name="recon_break_document_idx", condition=~Q(document="")),
            models.Index(fields=["opened_at"], name="recon_break_opened_idx"),
            models.Index(fields=["key"], name="recon_break_accepted_idx", condition=~Q(accepted_by="")),
        ]

    def __str__(self):
        return f"{self.code} {self.key} ({self.status})"


class ReconciliationMark(models.Model):
    """The reconciliation status of one journal or canonical document: the result of its last check.

    `subject` is `journal:<uuid>` or `<document_type>:<source_system>:<id>`; an object without a mark is
    `unreconciled` (never checked).

    A run writes up to one mark per object it checked (1.75 million at a million invoices), so the references
    to the entity and the run are checked by statement-level triggers (migration 0012: one set-based check per
    statement) rather than by foreign keys, whose per-row checks cost more than the rows themselves; runs are
    never deleted (a trigger refuses it) and an entity with marks cannot be (another trigger).
    """

    class Status(models.TextChoices):
        MATCHED = "matched"
        BREAK = "break"

    subject = models.CharField(max_length=300, primary_key=True)
    entity = models.ForeignKey("ledger.Entity", on_delete=models.DO_NOTHING, related_name="+", db_constraint=False,
                               db_index=False)
    status = models.CharField(max_length=10, choices=Status.choices)
    checked_at = models.DateTimeField()
    run = models.ForeignKey(ReconciliationRun, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False,
                            db_index=False)
