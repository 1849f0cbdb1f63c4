"""ERPNext (Frappe REST) connector: one submitted Journal Entry per journal, created and submitted in one
request, found again by our journal id in `cheque_no`; the API token comes from the environment, never the
database. The wire details (auth, post, look-up, error answers) are in `ErpNextConnector`'s docstring."""
import json

import requests

from ledger.connectors.base import PermanentError, PostResult
from ledger.connectors.http import HttpConnector

DOCTYPE_PATH = "/api/resource/Journal Entry"


def frappe_message(body: dict) -> str:
    """The human message of a Frappe error body (its `_server_messages`, else `exception`/`exc_type`)."""
    messages = []
    raw = body.get("_server_messages")
    if isinstance(raw, str):
        try:
            for item in json.loads(raw):
                try:
                    parsed = json.loads(item) if isinstance(item, str) else item
                    messages.append(parsed.get("message", "") if isinstance(parsed, dict) else str(parsed))
                except ValueError:
                    messages.append(str(item))
        except ValueError:
            messages.append(raw)
    messages = [m for m in messages if m]
    if messages:
        prefix = f"{body['exc_type']}: " if body.get("exc_type") else ""
        return prefix + " | ".join(messages)
    if body.get("exception"):
        return str(body["exception"])
    if body.get("exc_type"):
        return str(body["exc_type"])
    if body.get("message"):
        return str(body["message"])
    return ""


class ErpNextConnector(HttpConnector):
    """One submitted Journal Entry per journal, over Frappe REST.

    - Auth: `Authorization: token <api_key>:<api_secret>`, read from the environment variable named by the
      entity's `token_env` setting (holding `api_key:api_secret`), never stored in the database.
    - Post: `POST /api/resource/Journal Entry` with `docstatus: 1` (create and submit in one request); our
      journal id goes in `cheque_no` (Reference Number, with `cheque_date`) and in `user_remark`, which is
      how we find it again. The ERP document reference is the returned `name`.
    - Look-up: `GET /api/resource/Journal Entry?filters=[["cheque_no","=",id],["docstatus","<",2]]`; a
      draft found there (docstatus 0) is submitted rather than created again.
    - Errors: Frappe answers `exc_type` and `_server_messages` (a JSON string holding a list of JSON strings);
      417 is a validation error, 401/403 authentication or permission, 409 a duplicate (which, for us, may
      mean the entry exists: treated as ambiguous so that we look it up), 429 with `Retry-After`.
    """

    name = "erpnext"

    def auth_headers(self) -> dict:
        return {"Authorization": f"token {self.secret('token_env')}"}

    def error_message(self, response: requests.Response) -> str:
        try:
            message = frappe_message(response.json())
        except ValueError:
            message = ""
        return f"HTTP {response.status_code}: {message or response.text[:500]}"

    def is_ambiguous_status(self, response: requests.Response) -> bool:
        # 409 DuplicateEntryError: the entry may be ours from an earlier attempt; look before deciding.
        return response.status_code in (408, 409, 502, 504)

    def payload(self, journal) -> dict:
        company = self.settings.get("company")
        if not company:
            raise PermanentError(f"entity {self.entity.code}: ERPNext company is not configured")
        accounts = self.erp_accounts(journal)
        receivable = {m.account_id for m in journal.entity.mappings.filter(role="receivable")}
        rows = []
        for line in journal.lines.all():
            row = {"account": accounts[line.account.code],
                   "debit_in_account_currency": str(line.debit), "credit_in_account_currency": str(line.credit)}
            if line.account_id in receivable and line.customer_id:
                row["party_type"] = "Customer"
                row["party"] = line.customer_id
            if self.settings.get("cost_center"):
                row["cost_center"] = self.settings["cost_center"]
            if line.memo:
                row["user_remark"] = line.memo[:140]
            rows.append(row)
        return {
            "company": company, "posting_date": journal.accounting_date.isoformat(), "voucher_type": "Journal Entry",
            "cheque_no": str(journal.pk), "cheque_date": journal.accounting_date.isoformat(),
            "user_remark": f"Tieout journal {journal.pk}: {journal.description}"[:1000],
            "accounts": rows, "docstatus": 1,
        }

    def post_journal(self, journal) -> PostResult:
        response = self.request("POST", DOCTYPE_PATH, write=True, json=self.payload(journal))
        name = (response.json().get("data") or {}).get("name")
        if not name:
            raise PermanentError("ERPNext accepted the entry but returned no name")
        return PostResult(name)

    def lookup(self, journal) -> PostResult | None:
        params = {"filters": json.dumps([["cheque_no", "=", str(journal.pk)], ["docstatus", "<", 2]]),
                  "fields": json.dumps(["name", "docstatus"])}
        rows = self.request("GET", DOCTYPE_PATH, write=False, params=params).json().get("data") or []
        if not rows:
            return None
        row = sorted(rows, key=lambda r: -int(r.get("docstatus", 0)))[0]
        if int(row.get("docstatus", 0)) == 0:
            # Created but never submitted: submit it rather than create a second one.
            self.request("PUT", f"{DOCTYPE_PATH}/{row['name']}", write=True, json={"docstatus": 1})
        return PostResult(row["name"], already_existed=True)

    def test_connection(self) -> str:
        response = self.request("GET", "/api/method/frappe.auth.get_logged_user", write=False)
        return f"connected as {response.json().get('message')}"
