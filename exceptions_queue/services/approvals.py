"""Approvals (maker-checker): the entity's policy says how many distinct approvers a kind and amount need; the
requester never decides and no one decides twice; the last approval or the first rejection calls the kind's
handler. An approval is about a journal, or (journal-less, e.g. a period close) about a `subject` such as
`period:US01:2026-11`, with at most one pending per kind and subject.
"""
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import services as audit
from config import roles
from config.errors import ApiError, BusinessRuleError, Codes, Conflict, NotFound, PermissionRefused
from exceptions_queue import workflow
from exceptions_queue.models import Approval, ApprovalDecision, ApprovalPolicy
from ledger.models import Journal

POLICY_FIELDS = ["credit_note_threshold", "write_off_threshold", "manual_journal_threshold", "two_approver_threshold"]


def approval_policy_ensure(*, entity, actor) -> ApprovalPolicy:
    policy, created = ApprovalPolicy.objects.get_or_create(entity=entity)
    if created:
        audit.record(actor=actor, action="approval_policy.created", object_type="approval_policy",
                     object_id=entity.code, after=audit.model_snapshot(policy, POLICY_FIELDS))
    return policy


@transaction.atomic
def approval_policy_update(*, entity, values: dict, actor) -> ApprovalPolicy:
    """Change an entity's approval thresholds (versioned by simple-history, audited here)."""
    unknown = set(values) - set(POLICY_FIELDS)
    if unknown:
        raise ApiError(f"unknown policy fields: {', '.join(sorted(unknown))}", code=Codes.INVALID_REQUEST, status=422)
    policy, created = ApprovalPolicy.objects.select_for_update().get_or_create(entity=entity)
    before = None if created else audit.model_snapshot(policy, POLICY_FIELDS)
    for name, value in values.items():
        setattr(policy, name, value)
    policy.save()
    audit.record(actor=actor, action="approval_policy.created" if created else "approval_policy.changed",
                 object_type="approval_policy", object_id=entity.code, before=before,
                 after=audit.model_snapshot(policy, POLICY_FIELDS))
    return policy


def approvals_required(*, entity, kind: str, amount: Decimal) -> int:
    """0 when no approval is needed, else the number of distinct approvers (API.md's defaults).

    The policy holds one threshold per kind (`<kind>_threshold`); a kind without handlers or without a
    threshold is a wiring error and fails loudly.
    """
    workflow.approval_handlers(kind)
    policy = ApprovalPolicy.objects.filter(entity=entity).first() or ApprovalPolicy(entity=entity)
    threshold = getattr(policy, f"{kind}_threshold", None)
    if threshold is None:
        raise workflow.UnknownKind(f"the approval policy has no threshold for kind {kind!r}")
    if amount < threshold:
        return 0
    return 2 if amount >= policy.two_approver_threshold else 1


def approval_request(*, entity, event, journal, kind, document_id, amount, currency, requested_by, required,
                     actor, reason: str, subject: str = "") -> Approval:
    """Open a pending approval for `journal` (or, journal-less, for `subject`), with the requester's reason
    (the approver reads why). A second pending request for the same kind and subject is refused
    (`approval_pending`, 409): the database's partial unique index decides, so two clicks cannot both win."""
    workflow.approval_handlers(kind)  # a kind nobody could approve is refused before it waits for anyone
    if journal is None and not subject:
        raise ApiError("an approval needs a journal or a subject", code=Codes.INVALID_REQUEST, status=422)
    try:
        with transaction.atomic():
            approval = Approval.objects.create(
                entity=entity, event=event, journal=journal, subject=subject, kind=kind, document_id=document_id,
                amount=amount, currency=currency, requested_by=requested_by,
                requested_by_label=requested_by.get_username() if requested_by else audit.actor_label(actor),
                required_approvals=required, reason=str(reason)[:2000])
    except IntegrityError:
        if subject and Approval.objects.filter(kind=kind, subject=subject, status=Approval.Status.PENDING).exists():
            raise Conflict(f"a {kind.replace('_', ' ')} request for {subject} is already waiting for a decision",
                           code=Codes.APPROVAL_PENDING) from None
        raise
    audit.record(actor=actor, action="approval.requested", object_type="approval", object_id=approval.pk,
                 event_id=event.pk if event else None,
                 after={"kind": kind, "amount": amount, "currency": currency, "required": required,
                        "requested_by": approval.requested_by_label, "journal": journal.pk if journal else None,
                        **({"subject": subject} if subject else {}), "reason": approval.reason})
    return approval


def _decide(approval_id, *, user, decision: str, comment: str) -> Approval:
    if not roles.has_role(user, *roles.DECIDERS):
        raise PermissionRefused("only controllers and admins decide approvals")
    # The journal is nullable now (period close approvals have none): FOR UPDATE cannot reach through the outer
    # join, so the journal is locked by a second statement.
    approval = (Approval.objects.select_for_update(of=("self",)).select_related("journal", "entity")
                .filter(pk=approval_id).first())
    if approval is not None and approval.journal_id:
        list(Journal.objects.select_for_update().filter(pk=approval.journal_id).values_list("pk", flat=True))
    if approval is None or not roles.may_see_entity(user, approval.entity.code):
        raise NotFound(f"no approval {approval_id}")  # outside the user's entities it does not exist for them
    if approval.status != Approval.Status.PENDING:
        raise Conflict(f"the approval is already {approval.status}", code=Codes.ALREADY_DECIDED)
    if approval.requested_by_id == user.pk:
        raise PermissionRefused("you raised this request; someone else must decide it",
                                code=Codes.SEGREGATION_OF_DUTIES)
    if approval.decisions.filter(user=user).exists():
        raise PermissionRefused("you have already decided this request", code=Codes.SEGREGATION_OF_DUTIES)
    try:
        with transaction.atomic():
            ApprovalDecision.objects.create(approval=approval, user=user, decision=decision, comment=comment or "")
    except IntegrityError:  # a concurrent second click by the same user
        raise PermissionRefused("you have already decided this request", code=Codes.SEGREGATION_OF_DUTIES) from None
    audit.record(actor=user, action=f"approval.{decision}", object_type="approval", object_id=approval.pk,
                 event_id=approval.event_id, after={"decision": decision, "comment": comment or ""})
    return approval


def _close(approval: Approval, status: str, actor) -> None:
    approval.status = status
    approval.decided_at = timezone.now()
    approval.save(update_fields=["status", "decided_at"])
    audit.record(actor=actor, action=f"approval.{status}", object_type="approval", object_id=approval.pk,
                 event_id=approval.event_id, before={"status": "pending"}, after={"status": status})


@transaction.atomic
def approval_approve(*, approval_id, user, comment: str = "") -> Approval:
    """One approver's yes; with the last one required, the kind's `approve` handler books the subject."""
    approval = _decide(approval_id, user=user, decision=ApprovalDecision.Decision.APPROVE, comment=comment)
    approvals = approval.decisions.filter(decision=ApprovalDecision.Decision.APPROVE).count()
    if approvals >= approval.required_approvals:
        _close(approval, Approval.Status.APPROVED, user)
        try:
            workflow.approval_handlers(approval.kind).approve(approval=approval, actor=user)
        except BusinessRuleError as exc:
            # The world moved on since the request (a payment arrived, the period closed): refuse, change nothing.
            raise Conflict(exc.detail, code=exc.code) from None
    return approval


@transaction.atomic
def approval_reject(*, approval_id, user, comment: str = "") -> Approval:
    """One no closes the request; the kind's `reject` handler refuses the subject for good."""
    approval = _decide(approval_id, user=user, decision=ApprovalDecision.Decision.REJECT, comment=comment)
    _close(approval, Approval.Status.REJECTED, user)
    workflow.approval_handlers(approval.kind).reject(approval=approval, actor=user)
    return approval
