"""The scheduled chain check: seal, verify from the last good check, and keep the run as an `AuditCheck`."""
import logging

from django.db import transaction

from audit.models import AuditCheck, AuditSeal
from audit.services.sealing import GENESIS, seal
from audit.services.verification import VerifyResult, verify

log = logging.getLogger(__name__)


def chain_check(*, full: bool = False, actor="system") -> AuditCheck:
    """Seal, then verify from the last good check (or everything); record the run; raise the alarm on failure.

    The incremental run trusts nothing but what it saw itself: it re-reads the chain hash at the seq where
    the last good run stopped and refuses to go on if it changed (or the chain got shorter). The daily
    full run (`full=True`) is the thorough pass with the digests' Merkle roots re-computed: it runs in the
    background, where twice the time costs nothing.
    """
    seal()
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
    result = problem or verify(from_seq=start_seq, prev_hash=start_hash, prev_entry_id=start_entry, roots=full)
    with transaction.atomic():
        check = AuditCheck.objects.create(
            full=last is None, from_seq=start_seq, to_seq=result.head_seq if result.ok else (result.bad_seq or 0),
            to_chain_hash=result.head_hash if result.ok else "", ok=result.ok, checked=result.count,
            problem=result.problem, bad_entry_id=result.bad_entry_id)
        if not result.ok:
            _raise_alarm(result, actor=actor)
    return check


def _raise_alarm(result: VerifyResult, *, actor) -> None:
    from config.errors import Codes
    from exceptions_queue.services import exception_open_system

    log.error("audit chain broken", extra={"problem": result.problem, "bad_entry_id": result.bad_entry_id,
                                            "bad_seq": result.bad_seq})
    exception_open_system(code=Codes.AUDIT_CHAIN_BROKEN, message=f"Audit chain broken: {result.problem}",
                          actor=actor)
