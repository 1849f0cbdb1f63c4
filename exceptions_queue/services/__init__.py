"""The queue's write paths, one module per concern (exceptions, approvals, manual journals); callers use `from
exceptions_queue import services` and the names re-exported here."""
from exceptions_queue.services.approvals import (  # noqa: F401
    POLICY_FIELDS,
    _close,
    _decide,
    approval_approve,
    approval_policy_ensure,
    approval_policy_update,
    approval_reject,
    approval_request,
    approvals_required,
)
from exceptions_queue.services.exceptions import (  # noqa: F401
    BULK_MAX,
    _bulk,
    _is_person,
    _locked_exception,
    _required_text,
    _resolve,
    _snapshot,
    events_waiting_for,
    exception_assign,
    exception_comment,
    exception_escalate,
    exception_open_for_audit_check,
    exception_open_for_callback,
    exception_open_for_event,
    exception_open_for_journal,
    exception_open_system,
    exception_replay,
    exception_resolve,
    exception_retry,
    exceptions_assign_bulk,
    exceptions_resolve_for_event,
    exceptions_resolve_for_journal,
    exceptions_retry_bulk,
    may_see_exception,
    exception_replay_refusal,
    user_by_username,
)
from exceptions_queue.services.manual_journals import (  # noqa: F401
    manual_journal_create,
)
