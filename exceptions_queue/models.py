"""Exceptions (failures a person fixes) and approvals (maker-checker) with their policies. At most one
unresolved exception per event (partial unique index): a retry that fails again updates it rather than piling
up duplicates. An approval collects decisions from distinct users (unique per user); the requester is never
one of them (segregation of duties, checked in the service)."""
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from config.history import HistoricalRecords

MONEY = {"max_digits": 20, "decimal_places": 4}


class ExceptionRecord(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        ASSIGNED = "assigned"
        RESOLVED = "resolved"

    class Process(models.TextChoices):
        CUSTOMER = "customer"
        INVOICE = "invoice"
        PAYMENT = "payment"
        CREDIT = "credit"
        WRITE_OFF = "write_off"
        POSTING = "posting"
        CALLBACK = "callback"
        APPROVAL = "approval"
        SYSTEM = "system"  # Tieout's own alarms, e.g. audit_chain_broken
        RECONCILIATION = "reconciliation"  # a break a reconciliation run found (code = the break code)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.CharField(max_length=50, db_index=True)
    message = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    process = models.CharField(max_length=20, choices=Process.choices)
    entity_code = models.CharField(max_length=20, blank=True, default="")
    event = models.ForeignKey("billing_sync.Event", null=True, blank=True, on_delete=models.PROTECT,
                              related_name="exceptions", db_constraint=False)
    journal = models.ForeignKey("ledger.Journal", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="exceptions")
    dependency_key = models.CharField(max_length=300, null=True, blank=True)
    amount = models.DecimalField(**MONEY, null=True, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                              related_name="owned_exceptions")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, default="")
    resolution = models.TextField(blank=True, default="")
    retry_count = models.PositiveIntegerField(default=0)
    # The source document the exception is about (invoice_id, payment_id, ...), for search by source ids.
    source_ref = models.CharField(max_length=200, blank=True, default="")
    # Escalation: raised a level each time someone escalates; the queue shows escalated rows first in triage.
    escalation_level = models.PositiveSmallIntegerField(default=0)
    escalated_at = models.DateTimeField(null=True, blank=True)
    escalated_by = models.CharField(max_length=150, blank=True, default="")
    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event"], name="exception_one_open_per_event",
                                    condition=Q(event__isnull=False) & ~Q(status="resolved")),
            models.UniqueConstraint(fields=["journal"], name="exception_one_open_per_journal",
                                    condition=Q(journal__isnull=False, event__isnull=True) & ~Q(status="resolved")),
            models.CheckConstraint(condition=~Q(status="resolved") | ~Q(resolution=""),
                                   name="exception_resolution_required"),
        ]
        indexes = [
            models.Index(fields=["status", "code"], name="exception_status_code_idx"),
            models.Index(fields=["dependency_key"], name="exception_dependency_idx",
                         condition=Q(dependency_key__isnull=False) & ~Q(status="resolved")),
            # The queue lists newest first under any one filter: each filter column leads an index that
            # ends in created_at, so a filtered first page is an index range scan, not a sort of the table.
            models.Index(fields=["-created_at", "id"], name="exception_created_idx"),
            models.Index(fields=["status", "-created_at"], name="exception_status_created_idx"),
            models.Index(fields=["code", "-created_at"], name="exception_code_created_idx"),
            models.Index(fields=["entity_code", "-created_at"], name="exception_entity_created_idx"),
            models.Index(fields=["process", "-created_at"], name="exception_process_created_idx"),
            models.Index(fields=["owner", "-created_at"], name="exception_owner_created_idx"),
            models.Index(fields=["source_ref"], name="exception_source_ref_idx",
                         condition=~Q(source_ref="")),
            # The queue's default view (status=unresolved: open or assigned) newest first; resolved rows,
            # the great majority over time, stay out of it.
            models.Index(fields=["-created_at", "id"], name="exception_unresolved_idx",
                         condition=~Q(status="resolved")),
            models.Index(fields=["-created_at", "id"], name="exception_escalated_idx",
                         condition=Q(escalation_level__gt=0)),
            # The dashboard's open exceptions by code and age (with retries): an index-only scan of the
            # unresolved rows instead of a pass over their heap pages.
            models.Index(fields=["code", "created_at"], include=["entity_code", "retry_count"],
                         name="exception_open_dash_idx", condition=~Q(status="resolved")),
        ]

    def __str__(self):
        return f"{self.code} ({self.status})"


class ExceptionComment(models.Model):
    """A note on an exception by the people working it (append-only; audited by the service)."""

    exception = models.ForeignKey(ExceptionRecord, on_delete=models.PROTECT, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.CheckConstraint(condition=~Q(body=""), name="exception_comment_not_empty")]


class ApprovalPolicy(models.Model):
    """When credit notes, write-offs and manual journals need approval, and by how many controllers."""

    entity = models.OneToOneField("ledger.Entity", on_delete=models.PROTECT, related_name="approval_policy")
    credit_note_threshold = models.DecimalField(**MONEY, default=1000)
    write_off_threshold = models.DecimalField(**MONEY, default=0,
                                              help_text="Write-offs of this amount or more need approval (0 = every one).")
    manual_journal_threshold = models.DecimalField(**MONEY, default=0)
    two_approver_threshold = models.DecimalField(**MONEY, default=10000)
    history = HistoricalRecords()

    class Meta:
        verbose_name_plural = "approval policies"

    def __str__(self):
        return f"Approval policy {self.entity.code}"


class Approval(models.Model):
    class Kind(models.TextChoices):
        CREDIT_NOTE = "credit_note"
        WRITE_OFF = "write_off"
        MANUAL_JOURNAL = "manual_journal"
        PERIOD_CLOSE = "period_close"  # closing a month whose close checks fail (maker-checker)
        PERIOD_REOPEN = "period_reopen"

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    entity = models.ForeignKey("ledger.Entity", on_delete=models.PROTECT, related_name="approvals")
    event = models.ForeignKey("billing_sync.Event", null=True, blank=True, on_delete=models.PROTECT,
                              related_name="approvals", db_constraint=False)
    journal = models.OneToOneField("ledger.Journal", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="approval")
    # What a journal-less approval is about, e.g. `period:US01:2026-11` for a period close or reopen.
    subject = models.CharField(max_length=300, blank=True, default="")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    document_id = models.CharField(max_length=200, blank=True, default="")
    amount = models.DecimalField(**MONEY)
    currency = models.CharField(max_length=3)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="requested_approvals")
    requested_by_label = models.CharField(max_length=150)
    required_approvals = models.PositiveSmallIntegerField()
    # Why the requester asks (a manual credit memo, write-off or journal raised in the portal).
    reason = models.TextField(blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(required_approvals__gte=1, required_approvals__lte=5),
                                   name="approval_required_range"),
            models.CheckConstraint(condition=Q(journal__isnull=False) | ~Q(subject=""), name="approval_has_subject"),
            # One pending close (or reopen) request per period at a time.
            models.UniqueConstraint(fields=["kind", "subject"], name="approval_one_pending_per_subject",
                                    condition=Q(status="pending") & ~Q(subject="")),
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="approval_status_idx")]


class ApprovalDecision(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    approval = models.ForeignKey(Approval, on_delete=models.PROTECT, related_name="decisions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True, default="")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["approval", "user"], name="decision_one_per_user")]
        ordering = ["at"]
