"""Evidence packs: `manage.py export_evidence`, checked by the pack's own verifier as an auditor would run it.

The verifier is taken out of the pack and run as a subprocess with `python -I -S` (isolated, no site
packages: the standard library only, no Django, no database). A clean pack verifies; a pack with one CSV
row changed fails, with the file and the row's object named, both when only the row changed (the signed
manifest catches it) and when the forger also rewrote the manifest (the signature, and the content
checks themselves: balance, the journal.created record, the entry hash).
"""
import base64
import csv
import datetime
import hashlib
import io
import json
import subprocess
import sys
import zipfile

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from audit import digests
from audit import services as audit
from audit.models import AuditEntry, AuditSeal
from billing_sync.models import Event, Receipt
from exceptions_queue.models import Approval
from ledger import services as ledger
from ledger.models import Journal
from portal import evidence
from tests import factories as f

pytestmark = pytest.mark.django_db


def _today() -> datetime.date:
    return timezone.now().astimezone(datetime.UTC).date()


def _us_history(integration, controller) -> dict:
    customer = f.customer()
    integration.send(customer)
    customer_id = customer["data"]["customer_id"]
    invoice = f.invoice(customer_id=customer_id)
    integration.send(invoice)
    integration.send(f.payment(customer_id=customer_id, amount="50.00",
                               allocations=[(invoice["data"]["invoice_id"], "50.00")]))
    event_id = integration.send(f.write_off(invoice["data"]["invoice_id"], "7.25")).json()["id"]
    approval = Approval.objects.get(event_id=event_id)
    assert controller.post(f"/api/v1/approvals/{approval.pk}/approve", {"comment": "ok"}).status_code == 200
    return invoice


def _gb_history(integration):
    with transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
    customer = f.customer(entity="GB01")
    integration.send(customer)
    integration.send(f.invoice(customer_id=customer["data"]["customer_id"], currency="GBP", entity="GB01"))


def _flush_deferred():
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def _export(tmp_path, name="pack.zip", entity="US01") -> tuple:
    out = io.StringIO()
    target = tmp_path / name
    call_command("export_evidence", "--entity", entity, "--from", _today().isoformat(), "--to",
                 _today().isoformat(), str(target), stdout=out)
    return target, out.getvalue()


def _run_verifier(tmp_path, pack, *extra) -> tuple[int, str]:
    """Exactly what the README tells the auditor: the pack's own verify_evidence.py, standard library only."""
    folder = tmp_path / "auditor"
    folder.mkdir(exist_ok=True)
    with zipfile.ZipFile(pack) as zf:
        (folder / "verify_evidence.py").write_bytes(zf.read("verify_evidence.py"))
    (folder / "tieout.pem").write_text(digests.public_key_pem())
    result = subprocess.run([sys.executable, "-I", "-S", str(folder / "verify_evidence.py"), str(pack),
                             "--public-key", str(folder / "tieout.pem"), *extra],
                            capture_output=True, text=True, timeout=120, cwd=folder)
    return result.returncode, result.stdout + result.stderr


def _rows(pack, name) -> list[dict]:
    with zipfile.ZipFile(pack) as zf:
        return list(csv.DictReader(io.StringIO(zf.read(name).decode())))


def _rewrite(pack, target, name, change, *, fix_manifest=False):
    """Copy the pack with one file changed (and, for the careful forger, the manifest's hash of it too)."""
    with zipfile.ZipFile(pack) as src, zipfile.ZipFile(target, "w") as dst:
        members = {i.filename: src.read(i.filename) for i in src.infolist()}
        members[name] = change(members[name])
        if fix_manifest:
            manifest = json.loads(members["manifest.json"])
            manifest["files"][name]["sha256"] = hashlib.sha256(members[name]).hexdigest()
            members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
        for filename, data in members.items():
            dst.writestr(filename, data)
    return target


def _change_csv(row_match, column, value):
    def change(data: bytes) -> bytes:
        rows = list(csv.reader(io.StringIO(data.decode())))
        header = rows[0]
        for row in rows[1:]:
            if row_match(dict(zip(header, row))):
                row[header.index(column)] = value
                break
        else:
            raise AssertionError("no row to change")
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode()
    return change


@pytest.fixture
def pack(tmp_path, entity, integration, controller):
    _us_history(integration, controller)
    _gb_history(integration)
    audit.digests_build(through=_today())  # today signed so far; what follows is chained, not yet signed
    _us_history(integration, controller)
    _flush_deferred()
    target, output = _export(tmp_path)
    assert output.startswith(f"wrote {target}: events.csv ")
    return target


def test_a_clean_pack_verifies_offline(tmp_path, pack):
    code, output = _run_verifier(tmp_path, pack)
    assert code == 0, output
    assert output.strip().endswith("OK: the pack is complete and unaltered")
    assert "digests: 1 signed day(s) checked" in output
    assert "is not covered by a digest yet" in output  # the history after the digest


def test_the_pack_holds_the_entity_and_only_its_content(pack):
    with zipfile.ZipFile(pack) as zf:
        names = set(zf.namelist())
    assert {"events.csv", "receipts.csv", "journals.csv", "journal_lines.csv", "approvals.csv", "exceptions.csv",
            "audit_entries.csv", "chain.csv", "digests.json", "public_key.pem", "README.txt", "verify_evidence.py",
            "manifest.json", "manifest.sig"} == names

    us_events = set(str(pk) for pk in Event.objects.filter(entity_code="US01").values_list("id", flat=True))
    gb_events = set(str(pk) for pk in Event.objects.filter(entity_code="GB01").values_list("id", flat=True))
    assert {r["id"] for r in _rows(pack, "events.csv")} == us_events
    assert {r["id"] for r in _rows(pack, "journals.csv")} == {
        str(pk) for pk in Journal.objects.filter(entity__code="US01").values_list("id", flat=True)}
    entries = _rows(pack, "audit_entries.csv")
    assert not {r["event_id"] for r in entries} & gb_events           # no other entity's content...
    chain = _rows(pack, "chain.csv")
    gb_entry_ids = set(AuditEntry.objects.filter(event_id__in=gb_events).values_list("id", flat=True))
    assert gb_entry_ids <= {int(r["entry_id"]) for r in chain}        # ...but their hashes, for the chain
    # The whole chain so far (the period is today, the last entries are this entity's; the export's own
    # entry is written after the pack, unsealed).
    assert [int(r["seq"]) for r in chain] == list(range(1, AuditSeal.objects.count() + 1))

    for receipt in _rows(pack, "receipts.csv"):  # the raw bytes, as received
        assert base64.b64decode(receipt["body_base64"]) == bytes(Receipt.objects.get(pk=receipt["id"]).body)
    [approval] = [r for r in _rows(pack, "approvals.csv")][:1]
    assert json.loads(approval["decisions"])[0]["user"] == "carl-controller"
    assert AuditEntry.objects.filter(action="audit.evidence_exported", object_id="US01").exists()


def test_each_csv_file_is_one_row_of_the_export_table(pack):
    """The pack's CSV files are the table's, in its order, each with its declared header and rows that fit it."""
    specs = (*evidence.ENTITY_FILES, evidence.CHAIN_FILE)
    with zipfile.ZipFile(pack) as zf:
        assert [n for n in zf.namelist() if n.endswith(".csv")] == [spec.name for spec in specs]
        for spec in specs:
            header, *rows = csv.reader(io.StringIO(zf.read(spec.name).decode()))
            assert tuple(header) == spec.columns, spec.name
            assert all(len(row) == len(spec.columns) for row in rows), spec.name


def test_a_pack_with_one_csv_row_changed_fails(tmp_path, pack):
    line = next(r for r in _rows(pack, "journal_lines.csv") if r["debit"] != "0.0000")
    forged = _rewrite(pack, tmp_path / "forged.zip", "journal_lines.csv",
                      _change_csv(lambda r: r == line, "debit", "1.0000"))
    code, output = _run_verifier(tmp_path, forged)
    assert code == 1, output
    assert "FAIL journal_lines.csv: its SHA-256 is not the one the signed manifest records" in output
    assert f"journal {line['journal_id']} does not balance" in output


def test_a_forger_who_also_fixes_the_manifest_is_caught_by_its_signature_and_the_content(tmp_path, pack):
    entry = next(r for r in _rows(pack, "audit_entries.csv") if r["action"] == "journal.posted")
    forged = _rewrite(pack, tmp_path / "forged.zip", "audit_entries.csv",
                      _change_csv(lambda r: r == entry, "actor", "someone-else"), fix_manifest=True)
    code, output = _run_verifier(tmp_path, forged)
    assert code == 1, output
    assert "FAIL manifest.sig: the manifest's signature is invalid" in output
    assert f"entry {entry['id']} (seq {entry['seq']}) does not hash to its entry hash" in output


def test_journal_lines_that_balance_but_differ_from_the_audit_record_are_caught(tmp_path, pack):
    lines = _rows(pack, "journal_lines.csv")
    line = next(r for r in lines if r["account"] == "4000")
    forged = _rewrite(pack, tmp_path / "forged.zip", "journal_lines.csv",
                      _change_csv(lambda r: r == line, "account", "4999"), fix_manifest=True)
    code, output = _run_verifier(tmp_path, forged)
    assert code == 1
    assert (f"the lines of journal {line['journal_id']} are not the ones its journal.created audit entry recorded"
            in output)


def test_a_changed_chain_link_in_the_pack_is_named(tmp_path, pack):
    link = _rows(pack, "chain.csv")[3]
    forged = _rewrite(pack, tmp_path / "forged.zip", "chain.csv",
                      _change_csv(lambda r: r == link, "entry_hash", "e" * 64), fix_manifest=True)
    code, output = _run_verifier(tmp_path, forged)
    assert code == 1
    assert f"chain.csv: the chain breaks at entry {link['entry_id']} (seq {link['seq']})" in output


def test_a_pack_signed_by_another_key_is_refused_when_the_key_is_pinned(tmp_path, pack):
    _, pem = digests.generate_key()
    other = tmp_path / "other.pem"
    other.write_text(pem)
    folder = tmp_path / "auditor2"
    folder.mkdir()
    with zipfile.ZipFile(pack) as zf:
        (folder / "verify_evidence.py").write_bytes(zf.read("verify_evidence.py"))
    result = subprocess.run([sys.executable, "-I", "-S", str(folder / "verify_evidence.py"), str(pack),
                             "--public-key", str(other)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "public_key.pem is not the key you gave" in result.stdout


def test_digests_kept_earlier_are_compared(tmp_path, pack):
    out = io.StringIO()
    call_command("audit_digest", "export", stdout=out)
    kept = json.loads(out.getvalue())
    (tmp_path / "kept.json").write_text(json.dumps(kept))
    code, output = _run_verifier(tmp_path, pack, "--digests", str(tmp_path / "kept.json"))
    assert code == 0, output
    kept["digests"][0]["day_root"] = "f" * 64  # what the auditor holds differs from what the pack says
    (tmp_path / "kept.json").write_text(json.dumps(kept))
    code, output = _run_verifier(tmp_path, pack, "--digests", str(tmp_path / "kept.json"))
    assert code == 1 and "differs from the one you kept" in output


def test_an_entry_moved_to_another_place_in_the_chain_is_named(tmp_path, pack):
    entry = _rows(pack, "audit_entries.csv")[2]
    forged = _rewrite(pack, tmp_path / "forged.zip", "audit_entries.csv",
                      _change_csv(lambda r: r == entry, "chain_hash", "a" * 64), fix_manifest=True)
    code, output = _run_verifier(tmp_path, forged)
    assert code == 1
    assert f"entry {entry['id']} is not at seq {entry['seq']} of the chain" in output
