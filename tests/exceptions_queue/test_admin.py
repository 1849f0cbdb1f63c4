"""Approval policies edited in the admin go through the audited service."""
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEntry
from exceptions_queue.models import ApprovalPolicy

pytestmark = pytest.mark.django_db


def test_changing_a_policy_in_the_admin_is_versioned_and_audited(client, entity, admin_api):
    client.force_login(get_user_model().objects.get(username="ada-admin"))
    policy = ApprovalPolicy.objects.get(entity=entity)
    response = client.post(f"/admin/exceptions_queue/approvalpolicy/{policy.pk}/change/", {
        "entity": entity.pk, "credit_note_threshold": "500.00", "write_off_threshold": "0",
        "manual_journal_threshold": "0", "two_approver_threshold": "10000.00"})
    assert response.status_code == 302, response.content[:2000]
    policy.refresh_from_db()
    assert policy.credit_note_threshold == Decimal("500")
    entry = AuditEntry.objects.get(action="approval_policy.changed", object_id="US01")
    assert Decimal(entry.before["credit_note_threshold"]) == Decimal("1000")
    assert Decimal(entry.after["credit_note_threshold"]) == Decimal("500")
    assert policy.history.count() == 2
