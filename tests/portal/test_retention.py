"""Retention (issue 13 item 5) on real PostgreSQL partitions: a closed month archived into a signed pack,
verified, then detached (the audit chain still provable from the signed digests: `audit_verify --from-digest`,
an archived event and its trace answering 410 `archived` with its pack, a trace whose receipt alone was archived
naming the receipt's pack); refused, with nothing removed, for an open
month, a month kept still, or a pack that does not verify."""
import datetime
import io
import json
import uuid
import zipfile
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from audit import services as audit
from audit import verify_evidence
from audit.models import AuditEntry, PartitionArchive
from billing_sync import services as billing
from billing_sync.models import Event, EventKey
from ledger import services as ledger
from ledger.models import Entity
from portal import services
from portal.models import RetentionPolicy
from tests import factories as f
from tests.audit.helpers import migrated, verify_cmd  # noqa: F401 (the fixture, used below)


# The partitions must be there: audit's migration test may have left its process's database at audit 0005.
pytestmark = pytest.mark.usefixtures("migrated")

def _today() -> datetime.date:
    return timezone.now().astimezone(datetime.UTC).date()


def _month() -> datetime.date:
    """Two months back: a month that is over (the policies in these tests keep nothing after it ends)."""
    return audit.month_add(_today().replace(day=1), -2)


def _exists(table: str, month: datetime.date) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [audit.partition_name(table, month)])
        return cursor.fetchone()[0]


@pytest.fixture
def history(entity, tmp_path):
    """Two events received in `_month()` (their receipts and audit entries there too), one today, digests
    signed through tomorrow, and policies keeping nothing after a month ends, writing packs to tmp_path."""
    month = _month()
    for kind in RetentionPolicy.Kind.values:
        RetentionPolicy.objects.update_or_create(kind=kind, entity=None,
                                                 defaults={"keep_months": 0, "location": str(tmp_path)})
    audit.partitions_ensure(since=month)
    then = datetime.datetime.combine(month.replace(day=14), datetime.time(12), tzinfo=datetime.UTC)
    old = []
    for n in range(2):
        with mock.patch("django.utils.timezone.now", return_value=then + datetime.timedelta(minutes=n)):
            old.append(billing.event_receive(body=json.dumps(f.customer()).encode(), user=None, headers={}))
    audit.digests_build(through=_today())
    billing.event_receive(body=json.dumps(f.customer()).encode(), user=None, headers={})
    audit.digests_build(through=_today() + datetime.timedelta(days=1))  # signs what follows the old month
    return month, [a.body["id"] for a in old]


def _close(entity, month):
    ledger.period_set_status(entity=entity, year=month.year, month=month.month, status="closed", actor="tester")


@pytest.mark.django_db
def test_a_closed_month_is_archived_verified_then_detached_and_the_chain_stays_provable(entity, history, finance, controller):
    month, old_ids = history
    _close(entity, month)
    end = datetime.datetime.combine(audit.month_add(month, 1), datetime.time.min, tzinfo=datetime.UTC)
    assert AuditEntry.objects.filter(at__lt=end, action="event.received").count() == 2

    outcomes = {kind: services.retention_archive(kind=kind, month=f"{month:%Y-%m}", actor="controller")
                for kind in ("events", "receipts", "audit_entries")}

    for kind, table in (("events", "billing_sync_event"), ("receipts", "billing_sync_receipt"),
                        ("audit_entries", "audit_auditentry")):
        outcome = outcomes[kind]
        assert outcome.detached and outcome.rows == 2 and not _exists(table, month)
        assert month not in audit.partitions_list(table)
        archive = PartitionArchive.objects.get(table=table, month=month)
        assert (archive.pack_name, archive.rows) == (f"tieout-retention-{kind}-{month:%Y-%m}.zip", 2)
        # The pack checks offline with the evidence pack's verifier: signature by the audit key, every file.
        report = verify_evidence.Report()
        with zipfile.ZipFile(outcome.path) as pack:
            manifest, _ = verify_evidence.check_manifest(pack, report, None)
        assert not report.failures and manifest["format"] == "tieout-retention/1" and manifest["rows"] == 2
    assert not Event.objects.filter(pk__in=old_ids).exists()
    assert EventKey.objects.filter(pk__in=old_ids).count() == 2  # identities stay taken
    actions = set(AuditEntry.objects.filter(object_type__in=["retention", "partition"]).values_list("action", flat=True))
    assert actions == {"retention.archived", "retention.verified", "partition.detached"}

    # The chain without the archived entries: provable from the signed digest that follows them.
    resume = outcomes["audit_entries"].resume_day
    assert resume is not None
    assert verify_cmd("--from-digest", resume.isoformat())[0] == 0
    assert verify_cmd()[0] == 0  # "from the start" starts there too: the daily full check stays green
    assert audit.chain_check(full=True).ok

    # The trace of an archived event says where its bytes went.
    answer = finance.get(f"/api/v1/events/{old_ids[0]}/trace")
    assert answer.status_code == 410, answer.content
    body = answer.json()
    assert body["code"] == "archived"
    assert body["archive"]["pack"] == f"tieout-retention-events-{month:%Y-%m}.zip"
    assert body["archive"]["location"] == str(outcomes["events"].path.parent)
    assert body["archive"]["sha256"] == outcomes["events"].pack_sha256
    assert APIClient().get(f"/api/v1/events/{old_ids[0]}/trace").status_code in (401, 403)
    # So does the event itself, with the same pointer (the API contract's extension, README).
    detail = finance.get(f"/api/v1/events/{old_ids[0]}")
    assert detail.status_code == 410 and detail["Content-Type"].startswith("application/problem+json")
    assert {k: detail.json()[k] for k in ("code", "event", "archive")} == {
        k: body[k] for k in ("code", "event", "archive")}
    assert detail.json()["event"]["id"] == old_ids[0]
    assert finance.get(f"/api/v1/events/{uuid.uuid4()}").status_code == 404  # unknown stays 404

    # Its data gone, the month cannot be open again.
    reopen = controller.post(f"/api/v1/periods/US01/{month:%Y-%m}/reopen", {"reason": "a late invoice"})
    assert reopen.status_code == 409 and reopen.json()["code"] == "retention_archived", reopen.content


@pytest.mark.django_db
def test_a_source_system_gets_404_for_an_archived_event(entity, history, integration):
    month, old_ids = history
    _close(entity, month)
    services.retention_archive(kind="events", month=month)
    for path in (f"/api/v1/events/{old_ids[0]}", f"/api/v1/events/{old_ids[0]}/trace"):
        assert integration.get(path).status_code == 404


@pytest.mark.django_db
def test_receipts_archived_alone_the_trace_names_the_receipts_pack(entity, history, finance):
    month, old_ids = history
    _close(entity, month)
    outcome = services.retention_archive(kind="receipts", month=month)
    event = Event.objects.get(pk=old_ids[0])

    trace = finance.get(f"/api/v1/events/{old_ids[0]}/trace")
    assert trace.status_code == 200, trace.content
    body = trace.json()
    assert body["receipt"] is None
    pointer = body["receipt_archive"]
    assert pointer["receipt_id"] == event.receipt_id
    assert (pointer["pack"], pointer["location"], pointer["sha256"], pointer["month"], pointer["rows"]) == (
        f"tieout-retention-receipts-{month:%Y-%m}.zip", str(outcome.path.parent), outcome.pack_sha256,
        f"{month:%Y-%m}", 2)
    assert finance.get(f"/api/v1/events/{old_ids[0]}").status_code == 200  # the event itself is still here
    web = Client()
    web.force_login(get_user_model().objects.get(username="fiona-ops"))
    page = web.get(f"/trace/event/{old_ids[0]}/")
    assert page.status_code == 200 and outcome.pack_sha256 in page.content.decode()

    # A receipt still in the database: no pointer.
    recent = Event.objects.exclude(pk__in=old_ids).get()
    assert finance.get(f"/api/v1/events/{recent.pk}/trace").json()["receipt_archive"] is None


@pytest.mark.django_db
def test_refused_for_an_open_month_nothing_removed(entity, history):
    month, old_ids = history
    with pytest.raises(services.RetentionRefused) as refused:
        services.retention_archive(kind="events", month=month, actor="controller")
    assert refused.value.code == "retention_month_open" and "US01" in refused.value.detail
    assert _exists("billing_sync_event", month) and Event.objects.filter(pk__in=old_ids).count() == 2
    assert not PartitionArchive.objects.exists()
    entry = AuditEntry.objects.get(action="retention.refused")
    assert entry.after["code"] == "retention_month_open"
    with pytest.raises(CommandError, match="retention_month_open"):
        call_command("retention_archive", "events", f"{month:%Y-%m}", stdout=io.StringIO())


@pytest.mark.django_db
def test_refused_while_the_policy_keeps_the_month(entity, history):
    month, _ = history
    _close(entity, month)
    RetentionPolicy.objects.filter(kind="receipts").update(keep_months=84)
    with pytest.raises(services.RetentionRefused) as refused:
        services.retention_archive(kind="receipts", month=month)
    assert refused.value.code == "retention_too_recent"
    assert _exists("billing_sync_receipt", month)


@pytest.mark.django_db
def test_refused_for_a_pack_that_does_not_verify(entity, history):
    month, old_ids = history
    _close(entity, month)
    written = services.retention_archive(kind="events", month=month, detach=False)
    assert not written.detached and _exists("billing_sync_event", month)
    # Tamper with the pack as kept in cold storage: one event's payload changed, the manifest left as signed.
    tampered = written.path.with_name("tampered.zip")
    with zipfile.ZipFile(written.path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "billing_sync_event.csv":
                data = data.replace(b"Acme Corp", b"Acme Corq", 1)
            dst.writestr(item, data)

    with pytest.raises(services.RetentionRefused) as refused:
        services.retention_archive(kind="events", month=month, pack=tampered)
    assert refused.value.code == "retention_archive_unverified"
    assert "SHA-256" in refused.value.detail
    assert _exists("billing_sync_event", month) and Event.objects.filter(pk__in=old_ids).count() == 2
    assert not PartitionArchive.objects.exists()

    # The untouched copy verifies and is the one recorded (the command, as an operator runs it).
    out = io.StringIO()
    call_command("retention_archive", "events", f"{month:%Y-%m}", "--pack", str(written.path), stdout=out)
    assert "archived and detached: 2 rows" in out.getvalue()
    assert not _exists("billing_sync_event", month)
    assert PartitionArchive.objects.get(table="billing_sync_event").pack_name == written.path.name


@pytest.mark.django_db
def test_audit_entries_wait_for_a_signed_digest_after_them(entity, history):
    month, _ = history
    _close(entity, month)
    with mock.patch("django.utils.timezone.now",
                    return_value=datetime.datetime.combine(month.replace(day=20), datetime.time(9),
                                                           tzinfo=datetime.UTC)):
        billing.event_receive(body=json.dumps(f.customer()).encode(), user=None, headers={})  # sealed after them
    with pytest.raises(services.RetentionRefused) as refused:
        services.retention_archive(kind="audit_entries", month=month)
    assert refused.value.code == "retention_no_digest"
    assert _exists("audit_auditentry", month)


@pytest.mark.django_db
def test_the_policy_command_shows_and_sets_audited(tmp_path):
    out = io.StringIO()
    call_command("retention_policy", "events", "--keep-months", "120", "--location", str(tmp_path), stdout=out)
    assert f"events: kept 120 months after the month ends; packs in {tmp_path}" in out.getvalue()
    entry = AuditEntry.objects.get(action="retention.policy_set", object_id="events")
    assert entry.after == {"keep_months": 120, "location": str(tmp_path), "entity": None}
    assert entry.actor == "cli:retention_policy"


# ------------------------------------------------------------------ per entity (one partition, every entity's rows)
def ledger_entity(code):
    return Entity.objects.get(code=code)


def _gb01_event(month):
    """GB01 (a second entity) with one event received in `month`."""
    ledger.entity_setup(code="GB01", currency="GBP", actor="test")
    then = datetime.datetime.combine(month.replace(day=15), datetime.time(8), tzinfo=datetime.UTC)
    with mock.patch("django.utils.timezone.now", return_value=then):
        answer = billing.event_receive(body=json.dumps(f.customer(entity="GB01")).encode(), user=None, headers={})
    assert answer.status == 202, answer.body


@pytest.mark.django_db
def test_every_entity_with_rows_in_the_month_must_allow_it(entity, history):
    month, old_ids = history
    _gb01_event(month)
    _close(entity, month)
    services.retention_policy_set(kind="events", entity="GB01", keep_months=84, actor="controller")
    assert services.entities_with_rows("events", month) == ["GB01", "US01"]

    # GB01 keeps its events seven years: the month's partition (US01's rows too) stays.
    with pytest.raises(services.RetentionRefused) as refused:
        services.retention_archive(kind="events", month=month, actor="controller")
    assert refused.value.code == "retention_too_recent"
    assert "GB01" in refused.value.detail and "US01" not in refused.value.detail
    assert AuditEntry.objects.filter(action="retention.refused").latest("id").after["entities"] == ["GB01"]

    # GB01 allows it now, but its month is open: refused, naming GB01 alone (US01 closed it).
    services.retention_policy_set(kind="events", entity="GB01", keep_months=0, actor="controller")
    with pytest.raises(services.RetentionRefused) as refused:
        services.retention_archive(kind="events", month=month, actor="controller")
    assert refused.value.code == "retention_month_open"
    assert "GB01" in refused.value.detail and "US01" not in refused.value.detail
    assert _exists("billing_sync_event", month) and Event.objects.filter(pk__in=old_ids).count() == 2

    ledger.period_set_status(entity=ledger_entity("GB01"), year=month.year, month=month.month, status="closed",
                             actor="tester")
    outcome = services.retention_archive(kind="events", month=month, actor="controller")
    assert outcome.detached and outcome.rows == 3 and not _exists("billing_sync_event", month)


@pytest.mark.django_db
def test_an_entity_without_rows_does_not_hold_the_month_but_audit_entries_are_everyones(entity, history):
    month, _ = history
    _close(entity, month)
    ledger.entity_setup(code="ZZ99", currency="USD", actor="test")  # its month open, nothing of it in the month
    RetentionPolicy.objects.create(kind="events", entity=ledger_entity("ZZ99"), keep_months=999)
    assert services.entities_with_rows("events", month) == ["US01"]
    assert services.retention_archive(kind="events", month=month).detached

    # Audit entries name no entity: the month's chain is everyone's, so ZZ99 (open, kept long) holds it.
    assert services.entities_with_rows("audit_entries", month) == ["US01", "ZZ99"]
    with pytest.raises(services.RetentionRefused) as refused:
        services.retention_archive(kind="audit_entries", month=month)
    assert refused.value.code == "retention_month_open" and "ZZ99" in refused.value.detail


@pytest.mark.django_db
def test_no_policy_for_an_entity_with_rows_and_no_default(entity, history, tmp_path):
    month, _ = history
    _close(entity, month)
    RetentionPolicy.objects.filter(kind="receipts", entity__isnull=True).delete()
    with pytest.raises(services.RetentionRefused) as refused:
        services.retention_archive(kind="receipts", month=month)
    assert refused.value.code == "retention_no_policy" and "US01" in refused.value.detail
    # US01's own policy is enough; the pack goes to TIEOUT_RETENTION_DIR then (no default, no location).
    services.retention_policy_set(kind="receipts", entity="US01", keep_months=0, actor="controller")
    with override_settings(TIEOUT_RETENTION_DIR=str(tmp_path / "dir")):
        written = services.retention_archive(kind="receipts", month=month, detach=False)
    assert written.rows == 2 and written.path.parent == tmp_path / "dir"


@pytest.mark.django_db
def test_entity_policies_set_by_command_audited_one_per_entity(entity, tmp_path):
    out = io.StringIO()
    call_command("retention_policy", "receipts", "--entity", "US01", "--keep-months", "120", stdout=out)
    assert "receipts of US01: kept 120 months after the month ends" in out.getvalue()
    entry = AuditEntry.objects.get(action="retention.policy_set", object_id="receipts:US01")
    assert entry.after == {"keep_months": 120, "location": "", "entity": "US01"}
    call_command("retention_policy", "receipts", "--entity", "US01", "--keep-months", "96", stdout=io.StringIO())
    assert RetentionPolicy.objects.get(kind="receipts", entity__code="US01").keep_months == 96
    assert RetentionPolicy.objects.filter(kind="receipts").count() == 2  # the default (migration 0001) and US01's
    with pytest.raises(CommandError, match="default policy's only"):
        call_command("retention_policy", "receipts", "--entity", "US01", "--location", str(tmp_path))
    with pytest.raises(CommandError, match="no entity"):
        call_command("retention_policy", "receipts", "--entity", "XX00", "--keep-months", "1")
    # The database holds it too: one policy per entity and kind, one default, a location on the default only.
    with pytest.raises(IntegrityError), transaction.atomic():
        RetentionPolicy.objects.create(kind="receipts", entity=ledger_entity("US01"), keep_months=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        RetentionPolicy.objects.create(kind="receipts", keep_months=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        RetentionPolicy.objects.create(kind="events", entity=ledger_entity("US01"), keep_months=1, location="/x")
