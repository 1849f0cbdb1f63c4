"""In a real browser: an auditor finds an ERP document reference on /trace/, follows the chain to the
journal, the invoice (with its version diffs) and the event, sees each step's audit entry hash, then
downloads an evidence pack from /evidence/ that the pack's own verifier accepts. Keyboard and phone
width: the search works by keyboard alone and the pages do not scroll sideways; axe finds no violation.
"""
import datetime
import subprocess
import sys
import zipfile

import pytest
from django.utils import timezone

from audit import digests
from audit.models import AuditEntry
from ledger.models import Journal
from tests import factories as f
from tests.portal.web.conftest import assert_accessible, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def posted(web_users, integration):
    integration.send(f.customer("cus_bt"))
    issued = integration.send(f.invoice("inv_bt", customer_id="cus_bt", lines=[("100.00", "7.25")])).json()["id"]
    integration.send(f.invoice("inv_bt", customer_id="cus_bt", lines=[("110.00", "7.98")], version=2,
                               type_="invoice.amended"))
    return {"event": issued, "journal": Journal.objects.get(event_id=issued)}


def test_auditor_follows_an_erp_reference_to_invoice_and_event_and_downloads_a_pack(page, posted, tmp_path):
    journal = posted["journal"]
    login(page, "aude-auditor")
    page.get_by_role("link", name="Trace", exact=True).click()
    page.get_by_label("Find by event id, journal id, invoice id or ERP document reference").fill(
        journal.erp_document_ref)
    page.get_by_label("Entity").select_option("US01")
    shot(page, "trace-search")
    page.get_by_role("button", name="Find").click()
    page.wait_for_url(f"**/trace/erp/US01/{journal.erp_document_ref}/")
    assert page.get_by_role("heading", level=1).inner_text().startswith("ERP document")

    page.locator(f'main a[href="/trace/journal/{journal.pk}/"]').first.click()
    page.wait_for_url(f"**/trace/journal/{journal.pk}/")
    posted_entry = AuditEntry.objects.get(action="journal.posted", object_id=str(journal.pk))
    hash_cell = page.locator(f'code.entry-hash[title="{posted_entry.entry_hash}"]')
    assert hash_cell.count() >= 1 and hash_cell.first.is_visible()
    shot(page, "trace-journal")

    page.locator(f'main a[href="/trace/invoice/{f.SOURCE}/inv_bt/"]').first.click()
    page.wait_for_url(f"**/trace/invoice/{f.SOURCE}/inv_bt/")
    versions = page.locator("#versions")
    assert "107.25" in versions.inner_text() and "117.98" in versions.inner_text()
    shot(page, "trace-invoice")

    page.locator(f'main a[href="/trace/event/{posted["event"]}/"]').first.click()
    page.wait_for_url(f"**/trace/event/{posted['event']}/")
    received = AuditEntry.objects.get(action="event.received", event_id=posted["event"])
    assert page.locator(f'code[title="{received.entry_hash}"]').count() >= 1
    assert "Raw body SHA-256" in page.locator("main").inner_text()

    page.get_by_role("link", name="Evidence", exact=True).click()
    day = timezone.now().astimezone(datetime.UTC).date().isoformat()
    page.get_by_label("Entity").select_option("US01")
    page.get_by_label("From (UTC day, included)").fill(day)
    page.get_by_label("To (UTC day, included)").fill(day)
    shot(page, "evidence")
    assert_accessible(page, "/evidence/ at 1280px")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download evidence pack").click()
    download = info.value
    assert download.suggested_filename == f"evidence-US01-{day}-{day}.zip"
    pack = tmp_path / download.suggested_filename
    download.save_as(pack)
    with zipfile.ZipFile(pack) as zf:
        (tmp_path / "verify_evidence.py").write_bytes(zf.read("verify_evidence.py"))
    (tmp_path / "key.pem").write_text(digests.public_key_pem())
    result = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "verify_evidence.py"), str(pack),
                             "--public-key", str(tmp_path / "key.pem")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert AuditEntry.objects.filter(action="audit.evidence_exported", actor="aude-auditor").count() == 1


@pytest.mark.parametrize("width", [1280, 390])
def test_trace_pages_by_keyboard_fit_the_screen_and_pass_axe(new_page, posted, width):
    page = new_page(width=width, height=900)
    login(page, "fiona-ops")
    page.goto("/trace/")
    page.get_by_label("Find by event id, journal id, invoice id or ERP document reference").focus()
    page.keyboard.type("inv_bt")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/trace/invoice/{f.SOURCE}/inv_bt/")
    journal = posted["journal"]
    for path in ("/trace/", f"/trace/invoice/{f.SOURCE}/inv_bt/", f"/trace/journal/{journal.pk}/",
                 f"/trace/event/{posted['event']}/", f"/trace/erp/US01/{journal.erp_document_ref}/"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (path, width, overflow)
        assert_accessible(page, f"{path} at {width}px")


def test_evidence_page_fits_a_phone_and_passes_axe(new_page, posted):
    page = new_page(width=390, height=900)
    login(page, "aude-auditor")
    page.goto("/evidence/")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, overflow
    assert_accessible(page, "/evidence/ at 390px")
