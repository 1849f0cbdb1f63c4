"""The audit log: entries written in the same transaction as the change, and the chain that seals them.

An `AuditEntry` is inserted by `audit.services.record` inside the transaction that makes the change, so
an entry exists exactly when its change committed. Its `entry_hash` covers its content. The chain
(`AuditSeal`) is appended by the sealer in commit-visible order: seq 1, 2, 3 ... without gaps, each
hash covering the previous one. Sealing outside the writers' transactions keeps writers from queueing
on one chain-head lock. The database refuses UPDATE, DELETE and TRUNCATE on both tables.
"""
from django.db import models
from django.utils import timezone


class AuditEntry(models.Model):
    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=100)
    object_type = models.CharField(max_length=60)
    object_id = models.CharField(max_length=100)
    event_id = models.UUIDField(null=True, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True, default="")
    entry_hash = models.CharField(max_length=64)

    class Meta:
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["event_id"], name="audit_event_idx"),
            models.Index(fields=["correlation_id"], name="audit_corr_idx"),
        ]
        verbose_name_plural = "audit entries"

    def __str__(self):
        return f"#{self.pk} {self.action} {self.object_type}:{self.object_id} by {self.actor}"


class AuditSeal(models.Model):
    seq = models.BigIntegerField(primary_key=True)
    entry = models.OneToOneField(AuditEntry, on_delete=models.PROTECT, related_name="seal")
    entry_hash = models.CharField(max_length=64)
    prev_hash = models.CharField(max_length=64)
    chain_hash = models.CharField(max_length=64)
    sealed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(seq__gte=1), name="audit_seal_seq_positive")]
