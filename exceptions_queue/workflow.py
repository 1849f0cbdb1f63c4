"""The generic workflow's registry: what approving, rejecting, retrying or replaying does, per subject kind.
The queue knows exceptions and approvals, not their subjects: an approval's `kind` (credit_note, write_off,
manual_journal) or an exception's `process` (invoice, payment, posting, callback, ...) names the kind, whose
owning app registers handlers here in its `AppConfig.ready()`; the queue's services call them inside their own
transaction. An unknown kind fails loudly (`UnknownKind`), never a silent no-op. Two hooks tell subjects'
owners that an exception about one was resolved or changed."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

from config.hooks import Hook


class UnknownKind(ImproperlyConfigured):
    """No app registered handlers for this subject kind: a wiring error, not a user's mistake."""


@dataclass(frozen=True)
class ApprovalHandlers:
    """`approve(approval, actor)` books what was approved; `reject(approval, actor)` refuses it for good.

    Both run in the decision's transaction; a `BusinessRuleError` from `approve` (the world moved on since
    the request) refuses the approval and changes nothing.
    """

    approve: Callable[..., None]
    reject: Callable[..., None]


@dataclass(frozen=True)
class ExceptionHandlers:
    """`retry(exception, actor)` repeats the failed step. `replay_refusal(exception)` says why the subject
    may not start over (None when it may); `replay_check(exception) -> dict` locks and verifies the stored
    input (raising `Conflict`) and returns detail for the audit entry; `replay(exception, actor)` starts
    the subject over. Kinds without `replay` are never replayed. All are called with keywords."""

    retry: Callable[..., None]
    replay: Callable[..., None] | None = None
    exception_replay_refusal: Callable[..., str | None] | None = None
    replay_check: Callable[..., dict] | None = None


_approval_kinds: dict[str, ApprovalHandlers] = {}
_exception_kinds: dict[str, ExceptionHandlers] = {}

# An exception was resolved (by a person, a retry that worked, or the posting that succeeded):
# receivers get `exception` and `actor`. billing_sync tells the source system.
exception_resolved = Hook("exceptions_queue.exception_resolved")
# An exception about an event was opened or resolved outside that event's own processing (a journal
# failed to post, a person resolved it): receivers get `event_id` and `actor`; billing_sync re-derives
# the event's status.
event_exceptions_changed = Hook("exceptions_queue.event_exceptions_changed")


def approval_kind_register(kind: str, *, approve: Callable[..., None], reject: Callable[..., None]) -> None:
    """Register the owner's handlers for approvals of `kind` (once per kind; the same handlers again is a no-op)."""
    handlers = ApprovalHandlers(approve=approve, reject=reject)
    if _approval_kinds.setdefault(kind, handlers) != handlers:
        raise ImproperlyConfigured(f"approval kind {kind!r} is already registered by another owner")


def exception_kind_register(process: str, *, retry: Callable[..., None], replay: Callable[..., None] | None = None,
                            exception_replay_refusal: Callable[..., str | None] | None = None,
                            replay_check: Callable[..., dict] | None = None) -> None:
    """Register the owner's handlers for exceptions of `process` (once per kind)."""
    handlers = ExceptionHandlers(retry=retry, replay=replay, exception_replay_refusal=exception_replay_refusal, replay_check=replay_check)
    if _exception_kinds.setdefault(process, handlers) != handlers:
        raise ImproperlyConfigured(f"exception kind {process!r} is already registered by another owner")


def approval_handlers(kind: str) -> ApprovalHandlers:
    try:
        return _approval_kinds[kind]
    except KeyError:
        raise UnknownKind(f"no handlers registered for approvals of kind {kind!r}") from None


def exception_handlers(process: str) -> ExceptionHandlers:
    try:
        return _exception_kinds[process]
    except KeyError:
        raise UnknownKind(f"no handlers registered for exceptions of kind {process!r}") from None


def registered_kinds() -> dict[str, list[str]]:
    """What is wired, for the start-up check and the tests."""
    return {"approval": sorted(_approval_kinds), "exception": sorted(_exception_kinds)}
