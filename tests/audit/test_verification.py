"""Verification (`audit.services.chain_verify`, `manage.py audit_verify`) and the tampering it must name.

* `audit_verify` seals what is pending and prints `OK <n> entries` on a clean chain (or an empty log),
  and gives the same answer when asked again in one transaction.
* The audit tables refuse UPDATE, DELETE and TRUNCATE; tampering is therefore done as the database
  superuser with the triggers off (`session_replication_role = replica`): an edited (even re-hashed),
  a deleted, an inserted and a reordered entry, a broken link and a missing chain position, each caught
  with the entry named; a dropped or loosened database guarantee or a disabled append-only guard is
  caught too; a rewrite that re-chains everything after the edit passes the chain check and is caught
  by the signed digest.
* The fast pass hashes exactly what is stored, trusts the signed heads (`roots=True` re-computes the
  Merkle roots), and lets entries not sealed yet pass at the end but not in the middle.
"""
import base64
import io

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit import digests
from audit import services as audit
from audit.models import AuditEntry, AuditSeal
from audit.services import entries as audit_entries
from audit.services import verification
from tests import factories as f
from tests.audit.helpers import flush_deferred, record_change, sealed, verify_cmd
from tests.audit.tamper import edit_entry, insert_entry, triggers_off

pytestmark = pytest.mark.django_db


def _customer(integration) -> str:
    payload = f.customer()
    assert integration.send(payload).status_code == 202
    return payload["data"]["customer_id"]


def _verify() -> tuple[int, str]:
    """Run `manage.py audit_verify`; return (exit code, stdout)."""
    out = io.StringIO()
    try:
        call_command("audit_verify", stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


def _history(integration) -> dict:
    """Some audited history: a customer, an invoice (posted), a payment (posted)."""
    customer_id = _customer(integration)
    invoice = f.invoice(customer_id=customer_id)
    integration.send(invoice)
    integration.send(f.payment(customer_id=customer_id, amount="50.00",
                               allocations=[(invoice["data"]["invoice_id"], "50.00")]))
    return invoice


def _sealed_history(integration) -> list[AuditEntry]:
    _history(integration)
    audit.chain_seal()
    with connection.cursor() as cursor:  # run the seals' deferred FK checks now, as their commit would
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    entries = list(AuditEntry.objects.order_by("id"))
    assert AuditSeal.objects.count() == len(entries)
    return entries


# ------------------------------------------------------------------------------------------- audit_verify
def test_audit_verify_is_ok_on_a_clean_chain(entity, integration):
    _history(integration)
    code, out = _verify()
    total = AuditEntry.objects.count()
    assert code == 0
    assert out.strip().splitlines()[-1] == f"OK {total} entries"
    assert AuditSeal.objects.count() == total  # it sealed everything pending first
    seqs = list(AuditSeal.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, total + 1))

    # More history, verified again: the chain grows, still OK.
    _history(integration)
    code, out = _verify()
    assert code == 0
    assert out.strip().splitlines()[-1] == f"OK {AuditEntry.objects.count()} entries"


def test_audit_verify_on_an_empty_log(db):
    assert not AuditEntry.objects.exists()
    code, out = _verify()
    assert (code, out.strip()) == (0, "OK 0 entries")


def test_audit_verify_gives_the_same_answer_when_asked_again(entity, integration):
    """An operator (or a script, or an admin view inside one transaction) re-runs the check after a failure.

    Today `chain_verify()` returns from inside its `DECLARE audit_verify_cur` loop without `CLOSE`, so in the
    same transaction a second run fails with `cursor "audit_verify_cur" already exists`."""
    entries = _sealed_history(integration)
    victim = entries[2]
    with triggers_off() as cursor:
        edit_entry(cursor, victim.pk, actor="mallory")
    first = audit.chain_verify()
    assert not first.ok and first.bad_entry_id == victim.pk
    second = audit.chain_verify()
    assert (second.ok, second.bad_entry_id, second.problem) == (False, victim.pk, first.problem)


# ------------------------------------------------------------------------------------------- tables
@pytest.mark.django_db
def test_audit_tables_refuse_update_delete_and_truncate():
    sealed(2)
    audit.digests_build(through=timezone.now().date())
    audit.chain_check()
    flush_deferred()
    for table in ("audit_auditentry", "audit_auditseal", "audit_auditdigest", "audit_auditcheck"):
        for statement in (f"UPDATE {table} SET id = id" if table != "audit_auditseal" else
                          f"UPDATE {table} SET seq = seq", f"DELETE FROM {table}", f"TRUNCATE {table} CASCADE"):
            with pytest.raises(DatabaseError) as refused:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(statement)
            assert "append-only" in str(refused.value), (statement, str(refused.value))


# ------------------------------------------------------------------------------------------- tampering
def test_audit_verify_names_an_entry_whose_content_was_changed(entity, integration):
    entries = _sealed_history(integration)
    victim = next(e for e in entries if e.action == "journal.posted")
    seq = AuditSeal.objects.get(entry=victim).seq
    with triggers_off() as cursor:
        edit_entry(cursor, victim.pk, after={**victim.after, "erp_document_ref": "JE-FAKE"})
    code, out = _verify()
    assert code == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"FAIL entry {victim.pk}:")
    assert f"entry {victim.pk} (seq {seq}) was altered" in last


def test_audit_verify_catches_a_change_whose_entry_hash_was_recomputed(entity, integration):
    entries = _sealed_history(integration)
    victim = next(e for e in entries if e.action == "invoice.created")
    with triggers_off() as cursor:
        edit_entry(cursor, victim.pk, actor="someone-else", rehash=True)
    code, out = _verify()
    assert code == 1
    assert out.strip().splitlines()[-1].startswith(f"FAIL entry {victim.pk}:")


def test_audit_verify_names_a_deleted_entry(entity, integration):
    entries = _sealed_history(integration)
    victim = entries[len(entries) // 2]
    seq = AuditSeal.objects.get(entry=victim).seq
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM audit_auditentry WHERE id = %s", [victim.pk])
    code, out = _verify()
    assert code == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"FAIL entry {victim.pk}:")
    assert f"entry {victim.pk} (seq {seq}) was deleted" in last


def test_audit_verify_names_a_deleted_entry_and_its_seal(entity, integration):
    entries = _sealed_history(integration)
    victim = entries[3]
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM audit_auditseal WHERE entry_id = %s", [victim.pk])
        cursor.execute("DELETE FROM audit_auditentry WHERE id = %s", [victim.pk])
    code, out = _verify()
    assert code == 1
    assert "FAIL entry" in out
    assert "chain position 4 is missing" in out


def test_audit_verify_names_a_broken_chain_link(entity, integration):
    entries = _sealed_history(integration)
    victim = entries[5]
    with triggers_off() as cursor:
        cursor.execute("UPDATE audit_auditseal SET chain_hash = repeat('a', 64) WHERE entry_id = %s", [victim.pk])
    code, out = _verify()
    assert code == 1
    assert out.strip().splitlines()[-1].startswith(f"FAIL entry {victim.pk}: chain broken at entry {victim.pk}")


@pytest.mark.django_db
def test_an_edited_entry_is_named():
    entries = sealed()
    victim = entries[4]
    with triggers_off() as cursor:
        edit_entry(cursor, victim.pk, after={"n": "forged"})
    assert verify_cmd() == (1, f"FAIL entry {victim.pk}: entry {victim.pk} (seq 5) was altered")


@pytest.mark.django_db
def test_a_column_edited_after_dropping_the_database_check_is_caught():
    victim = sealed()[1]
    with triggers_off() as cursor:
        cursor.execute("ALTER TABLE audit_auditentry DROP CONSTRAINT audit_entry_fields_match")
        cursor.execute("UPDATE audit_auditentry SET actor = 'mallory' WHERE id = %s", [victim.pk])
        cursor.execute("""ALTER TABLE audit_auditentry ADD CONSTRAINT audit_entry_fields_match CHECK (
            ROW(at, actor, action, object_type, object_id, event_id, correlation_id)::audit_entry_fields
            IS NOT DISTINCT FROM jsonb_populate_record(NULL::audit_entry_fields, content::jsonb)) NOT VALID""")
    code, last = verify_cmd()
    assert code == 1 and "audit_entry_fields_match) was altered or not validated" in last
    with triggers_off() as cursor:
        cursor.execute("ALTER TABLE audit_auditentry DROP CONSTRAINT audit_entry_fields_match")
    code, last = verify_cmd()
    assert code == 1 and "audit_entry_fields_match) was dropped" in last


@pytest.mark.django_db
def test_a_disabled_append_only_guard_is_caught():
    sealed(2)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditseal DISABLE TRIGGER audit_seal_append_only")
    code, last = verify_cmd()
    assert code == 1 and "the append-only guard audit_seal_append_only on audit_auditseal was disabled" in last


@pytest.mark.django_db
def test_a_deleted_entry_is_named():
    entries = sealed()
    victim = entries[6]
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM audit_auditentry WHERE id = %s", [victim.pk])
    assert verify_cmd() == (1, f"FAIL entry {victim.pk}: entry {victim.pk} (seq 7) was deleted")


@pytest.mark.django_db
def test_an_entry_inserted_into_the_past_is_named():
    with connection.cursor() as cursor:  # an id nobody used (as a rolled-back transaction leaves)
        cursor.execute("SELECT nextval(pg_get_serial_sequence('audit_auditentry', 'id'))")
        free_id = cursor.fetchone()[0]
    entries = sealed()
    assert entries[0].pk > free_id
    forged = audit_entries._build(actor="mallory", action="journal.posted", object_type="journal", object_id="x",
                                  after={"status": "posted"})
    with triggers_off() as cursor:
        insert_entry(cursor, free_id, forged)
    code, last = verify_cmd()
    assert code == 1
    assert last.startswith(f"FAIL entry {free_id}: entry {free_id} was inserted")


@pytest.mark.django_db
def test_an_entry_inserted_with_a_link_into_the_middle_of_the_chain_is_named():
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('audit_auditentry', 'id'))")
        free_id = cursor.fetchone()[0]
    sealed()
    forged = audit_entries._build(actor="mallory", action="journal.posted", object_type="journal", object_id="x",
                                  after={"status": "posted"})
    with triggers_off() as cursor:  # make room at seq 5, then fill it with a correctly linked forgery
        insert_entry(cursor, free_id, forged)
        cursor.execute("UPDATE audit_auditseal SET seq = seq + 100 WHERE seq >= 5")
        cursor.execute("UPDATE audit_auditseal SET seq = seq - 99 WHERE seq >= 105")
        cursor.execute("SELECT chain_hash FROM audit_auditseal WHERE seq = 4")
        prev = cursor.fetchone()[0]
        cursor.execute("""INSERT INTO audit_auditseal (seq, entry_id, entry_hash, prev_hash, chain_hash, sealed_at)
                          VALUES (5, %s, %s, %s, %s, now())""",
                       [free_id, forged.entry_hash, prev, audit.chain_hash(prev, 5, free_id, forged.entry_hash)])
    code, last = verify_cmd()
    assert code == 1
    assert last.startswith(f"FAIL entry {free_id}: entry {free_id} (seq 5) is out of order")


def _swap(cursor, a: int, b: int):
    """Swap the entries that two chain positions hold (three steps: entry_id is unique)."""
    for old, new in ((a, 0), (b, a), (0, b)):
        cursor.execute("""UPDATE audit_auditseal SET entry_id = %s,
                                 entry_hash = coalesce((SELECT entry_hash FROM audit_auditentry WHERE id = %s), '')
                          WHERE entry_id = %s""", [new, new, old])


@pytest.mark.django_db
def test_reordered_entries_are_named():
    entries = sealed()
    a, b = entries[3], entries[4]  # seq 4 and 5
    with triggers_off() as cursor:
        _swap(cursor, a.pk, b.pk)
    assert verify_cmd() == (1, f"FAIL entry {b.pk}: chain broken at entry {b.pk} (seq 4)")


def _rechain(cursor, from_seq: int):
    """What a careful attacker does after tampering: recompute every link from `from_seq` on."""
    cursor.execute("SELECT chain_hash FROM audit_auditseal WHERE seq = %s", [from_seq - 1])
    row = cursor.fetchone()
    prev = row[0] if row else audit.GENESIS
    cursor.execute("SELECT seq, entry_id, entry_hash FROM audit_auditseal WHERE seq >= %s ORDER BY seq", [from_seq])
    for seq, entry_id, entry_hash in cursor.fetchall():
        new = audit.chain_hash(prev, seq, entry_id, entry_hash)
        cursor.execute("UPDATE audit_auditseal SET prev_hash = %s, chain_hash = %s WHERE seq = %s", [prev, new, seq])
        prev = new


@pytest.mark.django_db
def test_reordered_and_rechained_entries_are_named_by_their_order():
    entries = sealed()
    a, b = entries[3], entries[4]
    with triggers_off() as cursor:
        _swap(cursor, a.pk, b.pk)
        _rechain(cursor, 4)
    code, last = verify_cmd()
    assert code == 1
    assert last == (f"FAIL entry {a.pk}: entry {a.pk} (seq 5) is out of order: it comes after entry {b.pk} "
                    "in the chain")


@pytest.mark.django_db
def test_a_rewrite_that_rechains_everything_after_it_is_caught_by_the_signed_digest():
    entries = sealed()
    [digest] = audit.digests_build(through=timezone.now().date())
    assert audit.chain_verify().ok
    victim = entries[2]
    with triggers_off() as cursor:
        forged_hash = edit_entry(cursor, victim.pk, after={"n": "rewritten"}, rehash=True)
        cursor.execute("UPDATE audit_auditseal SET entry_hash = %s WHERE entry_id = %s", [forged_hash, victim.pk])
        _rechain(cursor, 3)
    # Without the digests the chain is internally consistent again...
    assert audit.chain_verify(check_digests=False).ok
    # ...but it is not the chain that was signed.
    result = audit.chain_verify()
    assert not result.ok
    assert result.problem.startswith(f"digest {digest.day} (seq 1..{digest.last_seq}): the chain at seq "
                                     f"{digest.last_seq}")
    code, last = verify_cmd("--from-digest", digest.day.isoformat())
    assert code == 1 and "is not the signed head" in last


# ------------------------------------------------------------------------------------------- the fast pass
@pytest.mark.django_db
def test_the_fast_pass_trusts_signed_heads_and_roots_re_computes_the_merkle_roots():
    """A digest signed with the right key over a wrong day root: the heads it signs are the chain's, so the
    log itself is intact (the default pass says so); only `roots=True` re-computes the roots and names it.
    Only the key's holder can make such a digest, so this checks the signer's arithmetic, not an attacker."""
    sealed(6)
    [digest] = audit.digests_build(through=timezone.now().date())
    fast, thorough = audit.chain_verify(), audit.chain_verify(roots=True)
    assert (fast.ok, fast.count, fast.head_hash) == (thorough.ok, thorough.count, thorough.head_hash) == (
        True, digest.last_seq, digest.head_hash)
    assert fast.digests_checked == thorough.digests_checked == 1
    wrong = "ab" * 32
    body = {**digests.digest_body(digest), "day_root": wrong}
    signature = base64.b64encode(digests.signing_key().sign(digests.signed_message(body))).decode()
    with triggers_off() as cursor:
        cursor.execute("UPDATE audit_auditdigest SET day_root = %s, signature = %s WHERE id = %s",
                       [wrong, signature, digest.pk])
    assert audit.chain_verify().ok
    result = audit.chain_verify(roots=True)
    assert not result.ok and "the day's entries are not the signed ones (Merkle root differs)" in result.problem
    code, last = verify_cmd("--roots")
    assert code == 1 and "Merkle root differs" in last


@pytest.mark.django_db
def test_the_fast_pass_passes_entries_not_sealed_yet_at_the_end_but_not_in_the_middle():
    entries = sealed(5)
    tail = [record_change(object_id=f"tail-{i}") for i in range(3)]  # written after the sealer ran
    with transaction.atomic():
        fast = verification._fast_pass([], 1, audit.GENESIS, 0)
    assert fast is not None and fast[:2] == (5, 5) and fast[3] == entries[-1].pk
    assert audit.chain_verify().count == 5
    # An unsealed entry below the head is one inserted into the past: the fast pass refuses, the thorough names it.
    with triggers_off() as cursor:
        cursor.execute("DELETE FROM audit_auditseal WHERE seq = 5")
        cursor.execute("""INSERT INTO audit_auditseal (seq, entry_id, entry_hash, prev_hash, chain_hash, sealed_at)
                          SELECT 5, %s, e.entry_hash, s.chain_hash, '', now() FROM audit_auditentry e, audit_auditseal s
                          WHERE e.id = %s AND s.seq = 4""", [tail[0].pk, tail[0].pk])
        cursor.execute("SELECT chain_hash, entry_hash FROM audit_auditseal WHERE seq = 4")
        prev = cursor.fetchone()[0]
        cursor.execute("UPDATE audit_auditseal SET chain_hash = %s WHERE seq = 5",
                       [audit.chain_hash(prev, 5, tail[0].pk, tail[0].entry_hash)])
    with transaction.atomic():
        assert verification._fast_pass([], 1, audit.GENESIS, 0) is None
    result = audit.chain_verify()
    assert not result.ok and result.bad_entry_id == entries[-1].pk and "was inserted" in result.problem
