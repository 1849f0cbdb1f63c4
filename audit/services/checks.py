"""The scheduled chain check: seal, verify from the last good check (or everything), keep the run as an
`AuditCheck` and return it; a failed run is logged, and the alarm it calls for is raised by the caller one
layer up (`exceptions_queue.tasks`), never from here."""
import logging

from django.db import transaction

from audit.models import AuditCheck, AuditSeal
from audit.services.sealing import GENESIS, chain_seal
from audit.services.verification import VerifyResult, chain_verify

log = logging.getLogger(__name__)


def chain_check(*, full: bool = False) -> AuditCheck:
    """Seal, then verify from the last good check (or everything); store the run and return it.

    The returned row says whether the chain holds (`ok`) and, when it does not, what is wrong (`problem`,
    `bad_entry_id`, `to_seq`); opening `audit_chain_broken` is the caller's business.

    The incremental run trusts nothing but what it saw itself: it re-reads the chain hash at the seq where
    the last good run stopped and refuses to go on if it changed (or the chain got shorter). The daily
    full run (`full=True`) is the thorough pass with the digests' Merkle roots re-computed: it runs in the
    background, where twice the time costs nothing.
    """
    chain_seal()
    last = None if full else AuditCheck.objects.filter(ok=True).order_by("-at", "-id").first()
    start_seq, start_hash, start_entry = 1, GENESIS, 0
    problem = None
    if last is not None and last.to_seq > 0:
        anchor = AuditSeal.objects.filter(seq=last.to_seq).values("chain_hash", "entry_id").first()
        if anchor is None or anchor["chain_hash"] != last.to_chain_hash:
            problem = VerifyResult(False, 0, f"the chain at seq {last.to_seq}, verified at {last.at.isoformat()}, "
                                             "is gone or changed since", anchor["entry_id"] if anchor else None,
                                   last.to_seq)
        else:
            start_seq, start_hash, start_entry = last.to_seq + 1, last.to_chain_hash, anchor["entry_id"]
    result = problem or chain_verify(from_seq=start_seq, prev_hash=start_hash, prev_entry_id=start_entry,
                                     roots=full)
    with transaction.atomic():
        check = AuditCheck.objects.create(
            full=last is None, from_seq=start_seq, to_seq=result.head_seq if result.ok else (result.bad_seq or 0),
            to_chain_hash=result.head_hash if result.ok else "", ok=result.ok, checked=result.count,
            problem=result.problem, bad_entry_id=result.bad_entry_id)
    if not result.ok:
        log.error("audit chain broken", extra={"problem": result.problem, "bad_entry_id": result.bad_entry_id,
                                                "bad_seq": result.bad_seq})
    return check
