"""The evidence page: auditors and admins download an entity's pack (streamed from a temporary file,
named evidence-<ENTITY>-<from>-<to>.zip) that the pack's own verify_evidence.py accepts, run as a
subprocess with the public key downloaded from the same page; the export is audited with who, entity,
range and the manifest's SHA-256. Others are refused (403, forged POSTs too), anonymous visitors sign in,
entities outside the user's scope and bad dates are refused, and the digests export is the signed file.
"""
import datetime
import hashlib
import io
import json
import subprocess
import sys
import zipfile

import pytest
from django.db import transaction
from django.http import FileResponse
from django.test import Client
from django.utils import timezone

from audit import digests
from audit import services as audit
from audit.models import AuditEntry
from billing_sync import tokens
from config import correlation
from ledger import services as ledger
from tests import factories as f
from tests.portal.web.conftest import client_for

pytestmark = pytest.mark.django_db


def today() -> str:
    return timezone.now().astimezone(datetime.UTC).date().isoformat()


@pytest.fixture
def history(entity, integration, auditor, admin_api, finance, controller):
    integration.send(f.customer("cus_ev"))
    integration.send(f.invoice("inv_ev", customer_id="cus_ev"))
    audit.digests_build(through=timezone.now().astimezone(datetime.UTC).date())
    integration.send(f.invoice("inv_ev2", customer_id="cus_ev"))


def _download(client, entity="US01", date_from=None, date_to=None):
    return client.post("/evidence/", {"entity": entity, "date_from": date_from or today(),
                                      "date_to": date_to or today()})


def verify(tmp_path, pack_bytes: bytes, pem: bytes) -> tuple[int, str]:
    """What the pack's README tells the auditor to do, with the standard library only (-I -S)."""
    folder = tmp_path / "auditor"
    folder.mkdir(exist_ok=True)
    pack = folder / "pack.zip"
    pack.write_bytes(pack_bytes)
    with zipfile.ZipFile(pack) as zf:
        (folder / "verify_evidence.py").write_bytes(zf.read("verify_evidence.py"))
    (folder / "key.pem").write_bytes(pem)
    result = subprocess.run([sys.executable, "-I", "-S", str(folder / "verify_evidence.py"), str(pack),
                             "--public-key", str(folder / "key.pem")], capture_output=True, text=True,
                            timeout=120, cwd=folder)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("username", ["aude-auditor", "ada-admin"])
def test_pack_downloads_streams_verifies_and_is_audited(history, tmp_path, username):
    client = client_for(username)
    page = client.get("/evidence/")
    html = page.content.decode()
    assert page.status_code == 200
    for label in ('<label for="ev-entity">Entity</label>', '<label for="ev-from">', '<label for="ev-to">'):
        assert label in html
    assert 'name="csrfmiddlewaretoken"' in html
    before = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0
    response = _download(client)
    assert response.status_code == 200
    assert isinstance(response, FileResponse) and response.streaming  # never the whole pack in memory
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="evidence-US01-{today()}-{today()}.zip"'
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        manifest_bytes = zf.read("manifest.json")
        assert json.loads(manifest_bytes)["entity"] == "US01"
    pem = client.get("/evidence/public-key.pem")
    assert pem.status_code == 200 and pem.content.decode() == digests.public_key_pem()
    code, output = verify(tmp_path, body, pem.content)
    assert code == 0, output
    [entry] = AuditEntry.objects.filter(id__gt=before, action="audit.evidence_exported")
    assert entry.actor == username and entry.object_id == "US01"
    assert entry.after["from"] == today() and entry.after["to"] == today()
    assert entry.after["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()


def test_a_changed_pack_does_not_verify(history, tmp_path):
    client = client_for("aude-auditor")
    body = b"".join(_download(client).streaming_content)
    source = zipfile.ZipFile(io.BytesIO(body))
    forged = io.BytesIO()
    with zipfile.ZipFile(forged, "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "events.csv":
                data = data.replace(b"inv_ev2", b"inv_evX")
            out.writestr(info.filename, data)
    code, output = verify(tmp_path, forged.getvalue(), client.get("/evidence/public-key.pem").content)
    assert code != 0 and "events.csv" in output


def test_digests_export_is_the_signed_file(history):
    response = client_for("aude-auditor").get("/evidence/digests.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    body = json.loads(response.content)
    assert body["public_key_pem"] == digests.public_key_pem() and body["digests"]
    for item in body["digests"]:
        signature = item.pop("signature")
        assert digests.signature_valid(item, signature, digests.public_key_bytes())


@pytest.mark.parametrize("username", ["fiona-ops", "carl-controller", "billing-system"])
def test_others_are_refused_even_with_a_forged_post(history, username):
    client = client_for(username)
    before = AuditEntry.objects.filter(action="audit.evidence_exported").count()
    assert client.get("/evidence/").status_code == 403
    assert _download(client).status_code == 403
    assert client.get("/evidence/digests.json").status_code == 403
    assert client.get("/evidence/public-key.pem").status_code == 403
    assert AuditEntry.objects.filter(action="audit.evidence_exported").count() == before


def test_anonymous_goes_to_sign_in(history):
    for response in (Client().get("/evidence/"), Client().post("/evidence/", {"entity": "US01"})):
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_csrf_is_required(history):
    client = client_for("aude-auditor", enforce_csrf_checks=True)
    assert _download(client).status_code == 403


def test_entity_outside_scope_and_bad_dates_are_refused(history):
    with correlation.bound(None), transaction.atomic():
        ledger.entity_setup(code="GB01", currency="GBP", name="Tieout UK", actor="test")
    with correlation.bound(None):
        tokens.token_issue(username="gb-auditor", role="auditor", entities=["GB01"], actor="test")
    client = client_for("gb-auditor")
    html = client.get("/evidence/").content.decode()
    assert '<option value="GB01"' in html and '<option value="US01"' not in html
    refused = _download(client, entity="US01")
    assert refused.status_code == 400 and "Choose one of your entities." in refused.content.decode()
    backwards = _download(client_for("aude-auditor"), date_from=today(), date_to="2020-01-01")
    assert backwards.status_code == 400 and "The period ends before it starts." in backwards.content.decode()
    garbage = _download(client_for("aude-auditor"), date_from="yesterday")
    assert garbage.status_code == 400 and "Enter a date as YYYY-MM-DD." in garbage.content.decode()
    assert not AuditEntry.objects.filter(action="audit.evidence_exported").exists()
