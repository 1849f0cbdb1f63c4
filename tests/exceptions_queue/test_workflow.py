"""The generic workflow: every subject kind in use has its owner's handlers, an unknown kind fails loudly,
and the ledger's and the queue's hooks are wired to the layers above in layer order."""
import datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured

from billing_sync import handlers as billing_handlers
from billing_sync import tokens
from exceptions_queue import handlers as queue_handlers
from exceptions_queue import services as queue
from exceptions_queue import workflow
from exceptions_queue.models import Approval, ExceptionRecord
from ledger import hooks as ledger_hooks

pytestmark = pytest.mark.django_db


def test_every_kind_of_the_models_has_its_owners_handlers():
    kinds = workflow.registered_kinds()
    assert sorted(kinds["approval"]) == sorted(Approval.Kind.values)
    # `approval` is a process no code opens exceptions for; every other one has an owner.
    assert sorted(kinds["exception"]) == sorted(set(ExceptionRecord.Process.values) - {"approval"})
    assert workflow.approval_handlers("credit_note").approve == billing_handlers.document_approve
    assert workflow.approval_handlers("manual_journal").approve == queue_handlers.manual_journal_approve
    assert workflow.exception_handlers("posting").retry == queue_handlers.posting_retry
    assert workflow.exception_handlers("invoice").replay == billing_handlers.event_replay


def test_an_unknown_kind_fails_loudly():
    with pytest.raises(workflow.UnknownKind, match="gift_card"):
        workflow.approval_handlers("gift_card")
    with pytest.raises(workflow.UnknownKind, match="approval"):
        workflow.exception_handlers("approval")
    assert issubclass(workflow.UnknownKind, ImproperlyConfigured)


def test_an_approval_of_an_unknown_kind_is_refused_before_it_exists(entity):
    with pytest.raises(workflow.UnknownKind):
        queue.approvals_required(entity=entity, kind="gift_card", amount=Decimal("1.00"))
    with pytest.raises(workflow.UnknownKind):
        queue.approval_request(entity=entity, event=None, journal=None, kind="gift_card", document_id="G-1",
                               amount=Decimal("1.00"), currency="USD", requested_by=None, required=1,
                               actor="test", reason="")
    assert not Approval.objects.exists()


def test_a_second_owner_for_a_kind_is_refused():
    with pytest.raises(ImproperlyConfigured, match="already registered"):
        workflow.approval_kind_register("credit_note", approve=lambda **kw: None, reject=lambda **kw: None)
    # The owner registering its own handlers again (a second ready()) is fine.
    billing_handlers.register()
    queue_handlers.register()


def test_hooks_reach_the_queue_before_billing_sync():
    """The queue resolves a journal's exception before billing_sync re-derives the event's status from it."""
    assert ledger_hooks.journals_posted.receivers == (queue_handlers.on_journals_posted,
                                                      billing_handlers.on_journals_posted)
    assert ledger_hooks.journal_failed.receivers == (queue_handlers.on_journal_failed,)
    assert workflow.exception_resolved.receivers == (billing_handlers.on_exception_resolved,)
    assert workflow.event_exceptions_changed.receivers == (billing_handlers.on_event_exceptions_changed,)


def test_a_system_alarm_retry_changes_nothing_but_its_count(entity):
    exc = queue.exception_open_system(code="audit_chain_broken", message="x", actor="system")
    admin = _admin()
    after = queue.exception_retry(exception_id=exc.pk, actor=admin)
    assert after.retry_count == 1 and after.status == ExceptionRecord.Status.OPEN
    assert queue.exception_replay_refusal(after) == "the exception has no event to replay"


def _admin():
    return get_user_model().objects.create_superuser("wf-admin", "wf@example.com", "a-long-password-1")


def test_manual_journal_waits_for_approval_and_the_kinds_handler_releases_it(entity):
    fiona, carl = _staff()
    journal = queue.manual_journal_create(entity=entity, accounting_date=datetime.date(2026, 11, 30),
                                          description="accrual", user=fiona,
                                          lines=[("6200", "10.00", "", ""), ("1200", "", "10.00", "")])
    assert journal.status == "pending_approval"
    approval = Approval.objects.get(journal=journal)
    assert approval.kind == "manual_journal" and approval.reason == "accrual"
    queue.approval_approve(approval_id=approval.pk, user=carl)
    journal.refresh_from_db()
    assert journal.status in ("ready", "posting", "posted")


def _staff():
    for username, role in (("wf-fiona", "finance_ops"), ("wf-carl", "controller")):
        tokens.token_issue(username=username, role=role, password="correct-horse-battery-staple", actor="test")
    users = get_user_model().objects
    return users.get(username="wf-fiona"), users.get(username="wf-carl")
