"""The portal's part in the layers below, registered at start-up (`PortalConfig.ready`): period close and reopen
approvals (journal-less, about `period:<entity>:<YYYY-MM>`) close or reopen the month when approved, through
`portal.services`; rejecting one changes nothing (the approval's own audit entry records the refusal)."""
from exceptions_queue import workflow
from exceptions_queue.models import Approval
from portal import services


def period_close_approve(*, approval, actor) -> None:
    services.period_close_approved(approval=approval, actor=actor)


def period_reopen_approve(*, approval, actor) -> None:
    services.period_reopen_approved(approval=approval, actor=actor)


def period_request_reject(*, approval, actor) -> None:
    """Nothing to undo: the period stays as it is."""


def register() -> None:
    workflow.approval_kind_register(Approval.Kind.PERIOD_CLOSE, approve=period_close_approve,
                                    reject=period_request_reject)
    workflow.approval_kind_register(Approval.Kind.PERIOD_REOPEN, approve=period_reopen_approve,
                                    reject=period_request_reject)
