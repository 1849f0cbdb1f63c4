"""Signing the daily digests of the audit chain: once a UTC day is over, `digests_build` seals what is
pending, cuts the day's range of the chain, computes its Merkle roots, signs the digest with the audit key
(`audit.digests`) and records that it did."""
import base64
import datetime
import logging

from django.db import connection, transaction
from django.utils import timezone

from audit import digests, merkle
from audit.models import AuditDigest, AuditSeal
from audit.services.entries import record
from audit.services.sealing import GENESIS, SEAL_LOCK_KEY, chain_seal

log = logging.getLogger(__name__)


def _day_bounds(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time.min, tzinfo=datetime.UTC)


def digests_build(*, through: datetime.date | None = None, actor="system") -> list[AuditDigest]:
    """Sign a digest for every day up to `through` (default: yesterday, UTC) that has none yet.

    Holds the sealer's lock, so no seal is being appended while a day is cut. A day with nothing sealed
    still gets a digest (count 0): a missing day would be indistinguishable from a deleted one.
    """
    chain_seal()
    today = timezone.now().astimezone(datetime.UTC).date()
    through = through or today - datetime.timedelta(days=1)
    key = digests.signing_key()
    raw_public = digests.public_key_bytes(key.public_key())
    kid = digests.key_id(raw_public)
    made = []
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEAL_LOCK_KEY])
        last = AuditDigest.objects.order_by("-day").first()
        if last is None:
            first = AuditSeal.objects.order_by("seq").values_list("sealed_at", flat=True).first()
            if first is None:
                return []
            day = first.astimezone(datetime.UTC).date()
            prev_seq, prev_head, tree = 0, GENESIS, merkle.Frontier()
        else:
            day = last.day + datetime.timedelta(days=1)
            prev_seq, prev_head, tree = last.last_seq, last.head_hash, merkle.Frontier.from_json(last.frontier)
        while day <= through:
            end = AuditSeal.objects.filter(seq__gt=prev_seq, sealed_at__lt=_day_bounds(day)).order_by(
                "-seq").values("seq", "chain_hash").first()
            last_seq, head = (end["seq"], end["chain_hash"]) if end else (prev_seq, prev_head)
            day_tree = merkle.Frontier()
            for entry_hash in digests.iter_entry_hashes(prev_seq + 1, last_seq):
                leaf = merkle.leaf_hash(entry_hash)
                day_tree.append_leaf(leaf)
                tree.append_leaf(leaf)
            digest = AuditDigest(day=day, first_seq=prev_seq + 1, last_seq=last_seq, count=last_seq - prev_seq,
                                 prev_head_hash=prev_head, head_hash=head, day_root=day_tree.root().hex(),
                                 tree_size=tree.size, tree_root=tree.root().hex(), frontier=tree.to_json(),
                                 key_id=kid)
            digest.signature = base64.b64encode(key.sign(digests.signed_message(digests.digest_body(digest)))).decode()
            digest.save(force_insert=True)
            record(actor=actor, action="audit.digest_signed", object_type="audit_digest",
                   object_id=day.isoformat(), after=digests.digest_export_item(digest))
            made.append(digest)
            prev_seq, prev_head = last_seq, head
            day += datetime.timedelta(days=1)
    if made:
        log.info("audit digests signed", extra={"days": [d.day.isoformat() for d in made]})
    return made
