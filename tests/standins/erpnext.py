"""An ERPNext (Frappe REST) stand-in: Journal Entry create/submit, list with filters, token auth,
Frappe's error bodies (`exc_type`, `_server_messages` as a JSON string of JSON strings), 417, 401, 429.
"""
import json
import threading
from decimal import Decimal
from urllib.parse import parse_qs, unquote, urlsplit

from tests.standins.base import Standin, StandinHandler

PATH = "/api/resource/Journal Entry"


def frappe_error(status: int, message: str, exc_type: str | None = None) -> dict:
    exc_type = exc_type or {401: "AuthenticationError", 403: "PermissionError", 404: "DoesNotExistError",
                            409: "DuplicateEntryError", 417: "ValidationError", 429: "RateLimitExceededError"}.get(
        status, "Exception")
    return {"exc_type": exc_type, "exception": f"frappe.exceptions.{exc_type}: {message}",
            "_server_messages": json.dumps([json.dumps({"message": message, "title": "Message",
                                                        "indicator": "red", "raise_exception": 1})])}


class ErpNextStandin(Standin):
    def __init__(self, *, api_key="key", api_secret="secret", accounts=None, company="Tieout US", **kw):
        super().__init__(**kw)
        self.token = f"token {api_key}:{api_secret}"
        self.company = company
        self.accounts = set(accounts or ["1010", "1200", "2200", "2300", "4000", "4900", "6100", "6200"])
        self.entries: dict[str, dict] = {}
        self._seq = 0
        self._seq_lock = threading.Lock()
        self.fail_validation: str | None = None  # a permanent 417 for every create while set
        # Optional test hooks, each `callable(doc) -> bool`, run in the request's thread; a truthy return
        # drops the connection without an answer (the caller never learns what happened).
        self.on_receive_hook = None  # a create request arrived: body read, nothing validated or stored
        self.on_commit_hook = None  # the entry is stored; runs before the answer goes out

    def by_cheque(self, cheque_no: str) -> list[dict]:
        return [e for e in self.entries.values() if e.get("cheque_no") == cheque_no and e["docstatus"] < 2]

    def handle(self, handler: StandinHandler, method: str) -> None:
        if handler.headers.get("Authorization") != self.token:
            handler.body_json()
            handler.send_json(401, frappe_error(401, "Invalid token"))
            return
        path = unquote(urlsplit(handler.path).path)
        if method == "GET" and path == "/api/method/frappe.auth.get_logged_user":
            handler.send_json(200, {"message": "integration@tieout.test"})
            return
        if path == PATH and method == "GET":
            query = parse_qs(urlsplit(handler.path).query)
            filters = json.loads(query.get("filters", ["[]"])[0])
            rows = list(self.entries.values())
            for field, op, value in filters:
                if op == "=":
                    rows = [r for r in rows if str(r.get(field)) == str(value)]
                elif op == "<":
                    rows = [r for r in rows if r.get(field) < value]
            handler.send_json(200, {"data": [{"name": r["name"], "docstatus": r["docstatus"]} for r in rows]})
            return
        if path == PATH and method == "POST":
            fault = self.faults.take()
            if self.pre_fault(handler, fault, frappe_error):
                return
            doc = handler.body_json() or {}
            if self.on_receive_hook is not None and self.on_receive_hook(doc):
                handler.drop_connection()
                return
            problem = self.validate(doc)
            if problem:
                handler.send_json(417, frappe_error(417, problem))
                return
            with self._seq_lock:
                self._seq += 1
                doc["name"] = f"ACC-JV-2026-{self._seq:05d}"
            doc.setdefault("docstatus", 0)
            self.entries[doc["name"]] = doc
            if self.on_commit_hook is not None and self.on_commit_hook(doc):
                handler.drop_connection()
                return
            if self.post_fault(handler, fault, frappe_error):
                return
            handler.send_json(200, {"data": doc})
            return
        if path.startswith(PATH + "/") and method == "PUT":
            name = path[len(PATH) + 1:]
            doc = self.entries.get(name)
            body = handler.body_json() or {}
            if doc is None:
                handler.send_json(404, frappe_error(404, f"Journal Entry {name} not found"))
                return
            doc.update(body)
            handler.send_json(200, {"data": doc})
            return
        handler.body_json()
        handler.send_json(404, frappe_error(404, "Not found"))

    def validate(self, doc: dict) -> str | None:
        if self.fail_validation:
            return self.fail_validation
        if doc.get("company") != self.company:
            return f"Company {doc.get('company')} does not exist"
        if doc.get("cheque_no") and not doc.get("cheque_date"):
            return "Reference Date is mandatory if you entered Reference No"
        rows = doc.get("accounts") or []
        if not rows:
            return "Accounts table cannot be blank"
        debit = sum(Decimal(r.get("debit_in_account_currency", "0")) for r in rows)
        credit = sum(Decimal(r.get("credit_in_account_currency", "0")) for r in rows)
        if debit != credit:
            return f"Total Debit must be equal to Total Credit. The difference is {debit - credit}"
        for row in rows:
            if row.get("account") not in self.accounts:
                return f"Account {row.get('account')} does not exist"
        return None
