"""The portal's own tables: the retention policy, one row per kind of partitioned data (receipts' raw bytes,
events, audit entries), saying how long a month stays in the database before `retention_archive` may move it
into a signed archive pack and detach it."""
from django.db import models
from django.db.models import Q
from django.utils import timezone


class RetentionPolicy(models.Model):
    """How long one kind of data stays in the database after its month ends, and where its packs go.

    Whatever the policy says, a month is archived only once it is closed for every entity, and its
    partition is detached only after its pack verified (`portal.services.retention_archive`).
    """

    class Kind(models.TextChoices):
        RECEIPTS = "receipts", "Receipts (raw request bytes)"
        EVENTS = "events", "Events"
        AUDIT_ENTRIES = "audit_entries", "Audit entries"

    kind = models.CharField(max_length=20, choices=Kind.choices, unique=True)
    keep_months = models.PositiveIntegerField(help_text="Months kept in the database after the month ends.")
    location = models.CharField(max_length=500, blank=True, default="",
                                help_text="Directory of the archive packs (empty: TIEOUT_RETENTION_DIR).")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "retention policies"
        constraints = [models.CheckConstraint(condition=Q(keep_months__gte=0), name="retention_keep_months_positive")]

    def __str__(self):
        return f"{self.kind}: {self.keep_months} months"
