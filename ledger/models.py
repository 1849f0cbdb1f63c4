"""Ledger data: entities, chart of accounts, account mappings, periods, journals, outbox, numbering.
Invariants live in the database as well as here (see the migrations' triggers): every journal balances at
commit (deferred constraint trigger), a posted journal and its lines never change, money columns are
non-negative with one side per line, and ERP document references are unique."""
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from config.history import HistoricalRecords

MONEY = {"max_digits": 20, "decimal_places": 4}


class Entity(models.Model):
    code = models.CharField(max_length=20, unique=True)
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3)
    class PostingMode(models.TextChoices):
        SINGLE = "single", "One ERP document per journal"
        BATCH = "batch", "One ERP document per entity, day and account set (high volume)"

    erp_connector = models.CharField(max_length=30, default="builtin")
    erp_settings = models.JSONField(default=dict, blank=True,
                                    help_text="Connector settings; secrets are named by environment variable, never stored.")
    posting_mode = models.CharField(max_length=10, choices=PostingMode.choices, default=PostingMode.SINGLE)
    created_at = models.DateTimeField(default=timezone.now)
    history = HistoricalRecords()

    class Meta:
        verbose_name_plural = "entities"
        constraints = [models.CheckConstraint(condition=Q(currency__regex=r"^[A-Z]{3}$"), name="entity_currency_iso")]

    def __str__(self):
        return self.code


class Account(models.Model):
    class Type(models.TextChoices):
        ASSET = "asset"
        LIABILITY = "liability"
        EQUITY = "equity"
        INCOME = "income"
        CONTRA_INCOME = "contra_income"
        EXPENSE = "expense"

    entity = models.ForeignKey(Entity, on_delete=models.PROTECT, related_name="accounts")
    code = models.CharField(max_length=30)
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=20, choices=Type.choices)
    is_active = models.BooleanField(default=True)
    erp_account = models.CharField(max_length=200, blank=True, default="",
                                   help_text="The ERP's name (or id) for this account; empty means our code.")
    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["entity", "code"], name="account_unique_code")]
        ordering = ["entity", "code"]

    def __str__(self):
        return f"{self.entity.code}:{self.code} {self.name}"


class AccountMapping(models.Model):
    """Which account a posting-rule role hits in an entity: the posting rules' accounts as data."""

    class Role(models.TextChoices):
        CLEARING = "clearing", "Payment clearing"
        RECEIVABLE = "receivable", "Accounts receivable"
        TAX_PAYABLE = "tax_payable", "Sales tax payable"
        UNAPPLIED_CASH = "unapplied_cash", "Unapplied cash"
        REVENUE = "revenue", "Revenue (default)"
        RETURNS = "returns", "Sales returns and allowances"
        FEES = "fees", "Payment processing fees"
        BAD_DEBT = "bad_debt", "Bad debt expense"

    entity = models.ForeignKey(Entity, on_delete=models.PROTECT, related_name="mappings")
    role = models.CharField(max_length=30, choices=Role.choices)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["entity", "role"], name="mapping_unique_role")]

    def __str__(self):
        return f"{self.entity.code}:{self.role} -> {self.account.code}"


class Period(models.Model):
    """A monthly accounting period; a month without a row is open."""

    class Status(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"

    entity = models.ForeignKey(Entity, on_delete=models.PROTECT, related_name="periods")
    year = models.PositiveIntegerField()
    month = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.CharField(max_length=150, blank=True, default="")
    # The close checks' results at the moment of closing ([{"check", "ok", "detail"}]), and, when some
    # failed, the reason given and the controller who approved closing anyway.
    close_checks = models.JSONField(default=list, blank=True)
    close_reason = models.TextField(blank=True, default="")
    close_approved_by = models.CharField(max_length=150, blank=True, default="")
    reopened_at = models.DateTimeField(null=True, blank=True)
    reopened_by = models.CharField(max_length=150, blank=True, default="")
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["entity", "year", "month"], name="period_unique_month"),
            models.CheckConstraint(condition=Q(month__gte=1, month__lte=12), name="period_month_range"),
        ]

    def __str__(self):
        return f"{self.entity.code} {self.year}-{self.month:02d} {self.status}"


class Journal(models.Model):
    class Status(models.TextChoices):
        PENDING_APPROVAL = "pending_approval"
        READY = "ready"
        POSTING = "posting"
        POSTED = "posted"
        FAILED = "failed"
        REJECTED = "rejected"  # an approval was refused: never posts

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    entity = models.ForeignKey(Entity, on_delete=models.PROTECT, related_name="journals")
    status = models.CharField(max_length=20, choices=Status.choices, db_index=True)
    accounting_date = models.DateField()
    event = models.ForeignKey("billing_sync.Event", null=True, blank=True, on_delete=models.PROTECT,
                              related_name="journals", db_constraint=False)
    reverses = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="reversed_by")
    kind = models.CharField(max_length=40)
    source_system = models.CharField(max_length=100, blank=True, default="")
    document_type = models.CharField(max_length=30, blank=True, default="")
    document_id = models.CharField(max_length=100, blank=True, default="")
    document_version = models.PositiveIntegerField(null=True, blank=True)
    description = models.CharField(max_length=300, blank=True, default="")
    erp_document_ref = models.CharField(max_length=100, null=True, blank=True)
    # In batch mode the ERP document that carries this journal (with others of its entity and day).
    erp_batch = models.ForeignKey("ErpBatch", null=True, blank=True, on_delete=models.PROTECT, related_name="journals")
    posted_at = models.DateTimeField(null=True, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, blank=True, default="")
    posting_attempts = models.PositiveIntegerField(default=0)
    # While a worker talks to the ERP it holds this lease; another delivery of the same task waits.
    posting_claimed_until = models.DateTimeField(null=True, blank=True)
    # Deliveries whose worker died mid-attempt (since the last manual retry): the poison-task counter.
    deliveries_lost = models.PositiveIntegerField(default=0, db_default=0)
    # Transient or ambiguous ERP failures since the last manual retry (the retry budget and the backoff's
    # exponent), and when the next attempt is due. The due time lives here, not only in a Celery countdown:
    # a worker that dies holding the countdown loses nothing, the outbox sweep sends what is due.
    posting_retries = models.PositiveIntegerField(default=0, db_default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["entity", "status"], name="journal_entity_status_idx"),
            # The outbox sweep's read: ready journals whose retry is due, oldest due first.
            models.Index(fields=["next_attempt_at"], name="journal_retry_due_idx",
                         condition=Q(status="ready", next_attempt_at__isnull=False)),
            models.Index(fields=["source_system", "document_type", "document_id"], name="journal_document_idx"),
            models.Index(fields=["created_at"], name="journal_created_idx"),
            # Dashboard reads: posted in a time window, the unposted backlog (oldest first), retried ones.
            models.Index(fields=["posted_at"], name="journal_posted_idx", condition=Q(status="posted")),
            models.Index(fields=["created_at"], name="journal_unposted_idx",
                         condition=Q(status__in=["pending_approval", "ready", "posting", "failed"])),
            models.Index(fields=["status"], name="journal_retried_idx", condition=Q(posting_attempts__gt=1)),
            # A month of an entity's journals (the period close's checks, month-scoped reads): a range of this
            # index, read index-only for the status and the posting time.
            models.Index(fields=["entity", "accounting_date"], include=["status", "posted_at"],
                         name="journal_entity_date_idx"),
            # Reports and exports: an entity's posted journals by accounting date (what was posted after an
            # aging's date, a period's journals), read from the index alone.
            models.Index(fields=["entity", "accounting_date"], include=["id", "source_system"],
                         name="journal_posted_date_idx", condition=Q(status="posted")),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status="posted") | (Q(erp_document_ref__isnull=False) & Q(posted_at__isnull=False)),
                name="journal_posted_has_ref",
            ),
            # One ERP document per journal, except the journals a batch document carries together.
            # (Per entity: two entities may post to two ERPs that number alike.)
            models.UniqueConstraint(fields=["entity", "erp_document_ref"], name="journal_unique_erp_ref",
                                    condition=Q(erp_batch__isnull=True)),
        ]

    def __str__(self):
        return f"{self.kind} {self.id} ({self.status})"


class JournalLine(models.Model):
    journal = models.ForeignKey(Journal, on_delete=models.PROTECT, related_name="lines")
    line_no = models.PositiveIntegerField()
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="lines")
    debit = models.DecimalField(**MONEY, default=0)
    credit = models.DecimalField(**MONEY, default=0)
    customer_id = models.CharField(max_length=100, blank=True, default="")
    invoice_id = models.CharField(max_length=100, blank=True, default="")
    payment_id = models.CharField(max_length=100, blank=True, default="")
    jurisdiction = models.CharField(max_length=60, blank=True, default="")
    memo = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        ordering = ["journal", "line_no"]
        constraints = [
            models.UniqueConstraint(fields=["journal", "line_no"], name="line_unique_no"),
            models.CheckConstraint(condition=Q(debit__gte=0) & Q(credit__gte=0), name="line_money_non_negative"),
            models.CheckConstraint(
                condition=(Q(debit__gt=0) & Q(credit=0)) | (Q(debit=0) & Q(credit__gt=0)),
                name="line_one_side",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "invoice_id"], name="line_account_invoice_idx"),
            # A customer's statement: their lines (lines that name no customer stay out of the index).
            models.Index(fields=["customer_id", "account"], name="line_customer_idx", condition=~Q(customer_id="")),
        ]


class Outbox(models.Model):
    """Work to hand to Celery, written in the same transaction as the journal it concerns."""

    id = models.BigAutoField(primary_key=True)
    topic = models.CharField(max_length=40, default="post_journal")
    journal = models.ForeignKey(Journal, on_delete=models.PROTECT, related_name="outbox")
    created_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    dispatch_count = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="outbox_pending_idx", condition=Q(dispatched_at__isnull=True))]


class PostingAttempt(models.Model):
    class Outcome(models.TextChoices):
        IN_PROGRESS = "in_progress"
        ABANDONED = "abandoned"  # the worker died before it could record an answer
        POSTED = "posted"
        ALREADY_POSTED = "already_posted"
        TRANSIENT = "transient"
        PERMANENT = "permanent"
        AMBIGUOUS = "ambiguous"

    journal = models.ForeignKey(Journal, on_delete=models.PROTECT, related_name="attempts")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    connector = models.CharField(max_length=30)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    erp_document_ref = models.CharField(max_length=100, blank=True, default="")
    message = models.TextField(blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["started_at"], name="attempt_started_idx")]


class DocumentSequence(models.Model):
    """Gapless numbering per entity and year for the built-in connector (row-locked on use)."""

    entity = models.ForeignKey(Entity, on_delete=models.PROTECT)
    year = models.PositiveIntegerField()
    last_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["entity", "year"], name="sequence_unique_year")]



class ErpBatch(models.Model):
    """Batch mode: one ERP document summarising many journals of one entity and accounting day.

    Journals join the open batch of their day as they are handed to posting; the batch closes when it
    is old or large enough and is then posted like a journal (claim, look-up first, acknowledgement).
    Each member journal keeps the link and gets the batch's ERP document reference once it posts.
    """

    class Status(models.TextChoices):
        OPEN = "open"
        READY = "ready"
        POSTING = "posting"
        POSTED = "posted"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    entity = models.ForeignKey(Entity, on_delete=models.PROTECT, related_name="erp_batches")
    accounting_date = models.DateField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    journal_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    erp_document_ref = models.CharField(max_length=100, null=True, blank=True)
    posted_at = models.DateTimeField(null=True, blank=True)
    posting_attempts = models.PositiveIntegerField(default=0)
    posting_claimed_until = models.DateTimeField(null=True, blank=True)
    # As on a journal: transient failures so far, and when the batch is next due to be sent (a retry's due
    # time, or the sweep's own re-send after it queued the batch); the sweep sends a ready batch once it is due.
    posting_retries = models.PositiveIntegerField(default=0, db_default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["entity", "accounting_date"], name="batch_one_open_per_day",
                                    condition=Q(status="open")),
            models.UniqueConstraint(fields=["entity", "erp_document_ref"], name="batch_unique_erp_ref"),
        ]

    @property
    def description(self) -> str:
        return f"Tieout batch of {self.journal_count} journals for {self.accounting_date}"

    @property
    def event_id(self):
        return None


class ErpBatchLine(models.Model):
    """A batch's summed amount per account and side (the lines of its ERP document)."""

    batch = models.ForeignKey(ErpBatch, on_delete=models.PROTECT, related_name="lines")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    debit = models.DecimalField(**MONEY, default=0)
    credit = models.DecimalField(**MONEY, default=0)

    class Meta:
        ordering = ["account__code"]
        constraints = [models.UniqueConstraint(fields=["batch", "account"], name="batch_line_unique_account")]

    customer_id = ""
    memo = ""


class EntityAccess(models.Model):
    """The entities one staff user may see and act on (admins see every entity whatever this says).

    A user without a row sees no entity: access is granted, never assumed. Changed only through
    `ledger.services.entity_access_set` (audited).
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="entity_access")
    all_entities = models.BooleanField(default=False)
    entities = models.ManyToManyField(Entity, blank=True, related_name="+")
    history = HistoricalRecords(m2m_fields=[entities])

    class Meta:
        verbose_name_plural = "entity access"

    def __str__(self):
        return f"entity access of {self.user}"


class ItemBalance(models.Model):
    """The running balance of one invoice or one payment on one account, over posted journals.

    The receivable and unapplied-cash subledgers in one table, so that AR aging and unapplied-cash aging
    read the open items rather than every line ever posted: an *invoice* item sums the lines that carry
    its invoice id on an asset account (the receivable), a *payment* item sums the lines that carry its
    payment id and no invoice id on a liability account (unapplied cash). `balance` is debit minus credit;
    `first_date` is the earliest accounting date posted to it (a payment's receipt).

    Written only by the database (migration 0010): when a journal becomes posted its lines are added in
    the same transaction, and a guard trigger refuses any other write. Posted journals never change, so
    the balance is exactly the sum of the posted lines; `ledger.selectors` derive a balance as of any
    date from it by taking back what was posted after that date.
    """

    class ItemType(models.TextChoices):
        INVOICE = "invoice"
        PAYMENT = "payment"

    id = models.BigAutoField(primary_key=True)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    source_system = models.CharField(max_length=100)
    item_type = models.CharField(max_length=10, choices=ItemType.choices)
    item_id = models.CharField(max_length=100)
    balance = models.DecimalField(**MONEY)
    first_date = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "source_system", "item_type", "item_id"],
                                               name="item_balance_unique")]
        indexes = [
            # The open items only (a settled invoice's row stays, at zero), with what the agings read.
            models.Index(fields=["account", "item_type"], include=["source_system", "item_id", "balance", "first_date"],
                         condition=~Q(balance=0), name="item_balance_open_idx"),
        ]

    def __str__(self):
        return f"{self.item_type} {self.source_system}:{self.item_id} on {self.account_id}: {self.balance}"
