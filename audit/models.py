"""The audit log's tables: entries written in the same transaction as their change, the chain that seals
them, the signed daily digests and the runs of the scheduled check; the database refuses UPDATE, DELETE
and TRUNCATE on all of them."""
import json

from django.db import models
from django.utils import timezone
from django.utils.functional import cached_property


class AuditEntry(models.Model):
    """One recorded change, inserted by `audit.services.record` inside the transaction that makes it.

    `content` is the canonical JSON of the record (the bytes that were hashed, kept verbatim) and
    `entry_hash` their SHA-256; the columns beside it are its indexed projection, and the database refuses
    a row whose projection differs from its content (constraint `audit_entry_fields_match`, migration
    0005), so verification only has to hash `content`.
    """

    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=100)
    object_type = models.CharField(max_length=60)
    object_id = models.CharField(max_length=100)
    event_id = models.UUIDField(null=True, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True, default="")
    # Canonical JSON (keys sorted, no spaces, UTF-8): what `entry_hash` is the SHA-256 of. Text, not jsonb,
    # because jsonb would re-format it and the hash must be re-computable from what is stored.
    content = models.TextField()
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

    @cached_property
    def document(self) -> dict:
        return json.loads(self.content) if self.content else {}

    @property
    def before(self):
        """The object's state before the change, as recorded (from `content`)."""
        return self.document.get("before")

    @property
    def after(self):
        return self.document.get("after")


class AuditEntryKey(models.Model):
    """The id of every audit entry ever written, with its time: what the seals' foreign key points at, since
    the partitioned entries cannot be referenced by id alone (migration 0006). Written by the entries'
    AFTER INSERT statement trigger, append-only; it outlives an archived month's partition, as the seals do."""

    id = models.BigIntegerField(primary_key=True)
    at = models.DateTimeField()

    class Meta:
        db_table = "audit_auditentrykey"


class AuditSeal(models.Model):
    """An entry's place in the hash chain: seq 1, 2, 3 ... without gaps, in entry-id order, each chain hash
    covering the previous one. Appended by the sealer outside the writers' transactions, so that writers
    never queue on one chain-head lock."""

    seq = models.BigIntegerField(primary_key=True)
    # Enforced against the key table `audit_auditentrykey` (migration 0006): entries are partitioned by
    # month, and PostgreSQL cannot reference their id alone on the partitioned table.
    entry = models.OneToOneField(AuditEntry, on_delete=models.PROTECT, related_name="seal", db_constraint=False)
    entry_hash = models.CharField(max_length=64)
    prev_hash = models.CharField(max_length=64)
    chain_hash = models.CharField(max_length=64)
    sealed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(seq__gte=1), name="audit_seal_seq_positive")]


class AuditDigest(models.Model):
    """The signed summary of one UTC day of the chain: what an auditor keeps to prove nothing changed later.

    It covers seals `first_seq..last_seq` (everything sealed up to the end of `day` after the previous
    digest), commits to the chain head at `last_seq`, to the Merkle root of the day's entry hashes and to
    the root of the whole tree of seq 1..last_seq (RFC 6962), so that inclusion proofs (one entry is in)
    and consistency proofs (an older digest's tree is a prefix of a newer one's) can be checked by anyone
    holding the public key. `frontier` carries the tree forward to the next day without re-reading it.
    """

    day = models.DateField(unique=True)
    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField()
    count = models.BigIntegerField()
    prev_head_hash = models.CharField(max_length=64)
    head_hash = models.CharField(max_length=64)
    day_root = models.CharField(max_length=64)
    tree_size = models.BigIntegerField()
    tree_root = models.CharField(max_length=64)
    frontier = models.JSONField()
    key_id = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["day"]
        constraints = [
            models.CheckConstraint(condition=models.Q(count=models.F("last_seq") - models.F("first_seq") + 1),
                                   name="audit_digest_count_matches_range"),
            models.CheckConstraint(condition=models.Q(tree_size=models.F("last_seq")),
                                   name="audit_digest_tree_is_the_chain"),
        ]

    def __str__(self):
        return f"digest {self.day} seq {self.first_seq}..{self.last_seq}"


class AuditCheck(models.Model):
    """One run of the scheduled verification: where it started and ended, and what it found.

    The next incremental run starts from the last good one (and re-checks that its chain hash is still
    the one it saw); the metric and the alarm read the latest row.
    """

    at = models.DateTimeField(default=timezone.now)
    full = models.BooleanField(default=False)
    from_seq = models.BigIntegerField()
    to_seq = models.BigIntegerField()
    to_chain_hash = models.CharField(max_length=64)
    ok = models.BooleanField()
    checked = models.BigIntegerField(default=0)
    problem = models.TextField(blank=True, default="")
    bad_entry_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["-at"], name="audit_check_at_idx")]


class PartitionArchive(models.Model):
    """One month's partition of a partitioned table (audit entries, receipts, events) archived into a signed
    pack and then detached and dropped (portal's retention). Append-only like the log.

    What stays answerable once the rows are gone: where they went (`pack_name`, `location`, `pack_sha256`,
    signed by the audit key), how many there were, and, for audit entries, the seals they held
    (`first_seq`..`last_seq`) and the first signed digest after them (`resume_day`): verification of the
    chain starts there (`audit_verify --from-digest`), its trust anchored in that digest's signature.
    """

    table = models.CharField(max_length=63)
    month = models.DateField()
    partition = models.CharField(max_length=63)
    rows = models.BigIntegerField()
    pack_name = models.CharField(max_length=200)
    location = models.CharField(max_length=500)
    pack_sha256 = models.CharField(max_length=64)
    first_seq = models.BigIntegerField(null=True, blank=True)
    last_seq = models.BigIntegerField(null=True, blank=True)
    resume_day = models.DateField(null=True, blank=True)
    actor = models.CharField(max_length=150)
    archived_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["table", "month"], name="partition_archive_once")]

    def __str__(self):
        return f"{self.partition} -> {self.pack_name}"
