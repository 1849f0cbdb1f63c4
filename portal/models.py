"""The portal's own tables: the retention policy, per entity and kind of partitioned data (receipts' raw bytes,
events, audit entries) with a default per kind for entities without their own, saying how long a month stays
in the database before `retention_archive` may move it into a signed archive pack and detach it."""
from django.db import models
from django.db.models import Q
from django.utils import timezone


class RetentionPolicy(models.Model):
    """How long one kind of an entity's data stays in the database after its month ends (`entity` null: the
    default of the kind, for entities without their own), and, on the default, where the kind's packs go.

    A month's partition holds every entity's rows, so it is archived only when every entity with rows in it
    allows it (its period closed, its policy's months passed), and detached only after its pack verified
    (`portal.services.retention_archive`).
    """

    class Kind(models.TextChoices):
        RECEIPTS = "receipts", "Receipts (raw request bytes)"
        EVENTS = "events", "Events"
        AUDIT_ENTRIES = "audit_entries", "Audit entries"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    entity = models.ForeignKey("ledger.Entity", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                               help_text="Empty: the kind's default, for entities without their own policy.")
    keep_months = models.PositiveIntegerField(help_text="Months kept in the database after the month ends.")
    location = models.CharField(max_length=500, blank=True, default="",
                                help_text="Directory of the archive packs (empty: TIEOUT_RETENTION_DIR); "
                                          "the default's only, since a pack holds every entity's rows.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "retention policies"
        constraints = [
            models.CheckConstraint(condition=Q(keep_months__gte=0), name="retention_keep_months_positive"),
            models.UniqueConstraint(fields=["kind", "entity"], name="retention_one_policy_per_entity",
                                    condition=Q(entity__isnull=False)),
            models.UniqueConstraint(fields=["kind"], name="retention_one_default", condition=Q(entity__isnull=True)),
            models.CheckConstraint(condition=Q(entity__isnull=True) | Q(location=""),
                                   name="retention_location_on_default_only"),
        ]

    def __str__(self):
        return f"{self.kind} ({self.entity_id and self.entity or 'default'}): {self.keep_months} months"
