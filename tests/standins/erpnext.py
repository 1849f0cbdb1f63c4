"""An ERPNext (Frappe REST) stand-in: Journal Entry create/submit/cancel/delete, read and list, GL Entry list,
token auth, Frappe's error bodies (`exc_type`, `_server_messages` as a JSON string of JSON strings), 417, 401,
404, 429.

What it follows of Frappe and ERPNext:
- The list API (`GET /api/resource/{doctype}`, `frappe.get_list`): `fields` (a JSON list; a child table's
  field named `` `tabJournal Entry Account`.account [as alias] `` left-joins the account rows, one row per
  account row), `filters` and `or_filters` (lists of `[field, op, value]` or `[doctype, field, op, value]`,
  or a dict; ops `=`, `!=`, `<`, `>`, `<=`, `>=`, `in`, `not in`, `between` (inclusive), `is` `set`/`not set`,
  `like`), `order_by` (`field asc|desc`, fields optionally qualified by their table), `limit_start`,
  `limit_page_length` (default 20, 0 = all). Default order `modified desc`.
- `GET /api/resource/Journal Entry/{name}` answers the document with its `accounts` child rows (404
  `DoesNotExistError` once deleted). Money comes back as JSON numbers.
- Submitting (`docstatus` 1 at create, or `PUT` `{"docstatus": 1}` on a draft) makes GL Entries, one per
  account row merged by account and party; cancelling (`PUT` `{"docstatus": 2}`, or
  `POST /api/method/frappe.client.cancel` `{"doctype", "name"}`) flags the entry's GL Entries `is_cancelled`
  and adds reversing ones, flagged too (ERPNext's `make_reverse_gl_entries`); changing any other field of a
  submitted entry is `UpdateAfterSubmitError` (417); `DELETE` refuses a submitted entry and deletes a draft or
  a cancelled one with its GL Entries. Every change stamps `modified` (naive, the site's time zone: UTC here,
  from `clock`).

Test helpers change the books as a person (or a database fix) would, without HTTP: `edit_amount`, `cancel`,
`delete`, `add_manual_entry`, `duplicate`, `set_posting_date`; `seed` bulk-loads submitted entries for the
read-back benchmark. Read-back requests consume `read_faults`; creates consume `faults`.
"""
import bisect
import datetime
import itertools
import json
import re
import threading
import uuid
from decimal import Decimal
from urllib.parse import parse_qs, unquote, urlsplit

from tests.standins.base import Standin, StandinHandler

PATH = "/api/resource/Journal Entry"
GL_PATH = "/api/resource/GL Entry"
CANCEL_PATH = "/api/method/frappe.client.cancel"
JE, JEA, GLE = "Journal Entry", "Journal Entry Account", "GL Entry"
INT_FIELDS = {"docstatus", "is_cancelled", "idx"}
MONEY_FIELDS = {"debit", "credit", "debit_in_account_currency", "credit_in_account_currency", "total_debit",
                "total_credit"}
DATETIME_FIELDS = {"modified", "creation"}
ORDER = re.compile(r"^\s*(.+?)(?:\s+(asc|desc))?\s*$", re.IGNORECASE)
FIELD = re.compile(r"^\s*(?:`?tab([^`.]+)`?\.)?`?(\w+)`?(?:\s+as\s+`?(\w+)`?)?\s*$", re.IGNORECASE)


def frappe_error(status: int, message: str, exc_type: str | None = None) -> dict:
    exc_type = exc_type or {401: "AuthenticationError", 403: "PermissionError", 404: "DoesNotExistError",
                            409: "DuplicateEntryError", 417: "ValidationError", 429: "RateLimitExceededError"}.get(
        status, "Exception")
    return {"exc_type": exc_type, "exception": f"frappe.exceptions.{exc_type}: {message}",
            "_server_messages": json.dumps([json.dumps({"message": message, "title": "Message",
                                                        "indicator": "red", "raise_exception": 1})])}


class FrappeError(Exception):
    def __init__(self, status: int, message: str, exc_type: str | None = None):
        super().__init__(message)
        self.status, self.body = status, frappe_error(status, message, exc_type)


def _number(value) -> float:
    return float(Decimal(str(value or 0)))


class _Table:
    """Named rows kept in a dict, with their names in sorted order computed when asked (a database index)."""

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self._sorted: list[str] | None = []

    def put(self, row: dict) -> None:
        if row["name"] not in self.rows:
            self._sorted = None
        self.rows[row["name"]] = row

    def drop(self, name: str) -> None:
        if self.rows.pop(name, None) is not None:
            self._sorted = None

    def names(self) -> list[str]:
        # Tests may also put rows into `rows` directly (as an earlier attempt would have left them).
        if self._sorted is None or len(self._sorted) != len(self.rows):
            self._sorted = sorted(self.rows)
        return self._sorted


class ErpNextStandin(Standin):
    def __init__(self, *, api_key="key", api_secret="secret", accounts=None, company="Tieout US", **kw):
        super().__init__(**kw)
        self.token = f"token {api_key}:{api_secret}"
        self.company = company
        self.accounts = set(accounts or ["1010", "1200", "2200", "2300", "4000", "4900", "6100", "6200"])
        self.journals = _Table()
        self.gl = _Table()
        self._seq = 0
        self._gl_seq = 0
        self._seq_lock = threading.Lock()
        self._state = threading.RLock()
        self.clock = lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.fail_validation: str | None = None  # a permanent 417 for every create while set
        # Optional test hooks, each `callable(doc) -> bool`, run in the request's thread; a truthy return
        # drops the connection without an answer (the caller never learns what happened).
        self.on_receive_hook = None  # a create request arrived: body read, nothing validated or stored
        self.on_commit_hook = None  # the entry is stored; runs before the answer goes out

    @property
    def entries(self) -> dict[str, dict]:
        """Journal Entries by name (as stored: the rows' amounts as they were sent)."""
        return self.journals.rows

    @property
    def gl_entries(self) -> list[dict]:
        return [self.gl.rows[name] for name in self.gl.names()]

    def by_cheque(self, cheque_no: str) -> list[dict]:
        return [e for e in self.entries.values() if e.get("cheque_no") == cheque_no and e["docstatus"] < 2]

    def now(self) -> str:
        return self.clock().strftime("%Y-%m-%d %H:%M:%S.%f")

    # ------------------------------------------------------------------------------------------ routing
    def handle(self, handler: StandinHandler, method: str) -> None:
        if handler.headers.get("Authorization") != self.token:
            handler.body_json()
            handler.send_json(401, frappe_error(401, "Invalid token"))
            return
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        try:
            if method == "GET" and path == "/api/method/frappe.auth.get_logged_user":
                handler.send_json(200, {"message": "integration@tieout.test"})
            elif method == "GET" and path in (PATH, GL_PATH):
                if not self.pre_read_fault(handler, frappe_error):
                    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    with self._state:
                        data = self.list_rows(JE if path == PATH else GLE, query)
                    handler.send_json(200, {"data": data})
            elif method == "GET" and path.startswith(PATH + "/"):
                if not self.pre_read_fault(handler, frappe_error):
                    with self._state:
                        doc = self._get(path[len(PATH) + 1:])
                        handler.send_json(200, {"data": self.document(doc)})
            elif method == "POST" and path == PATH:
                self.create(handler)
            elif method == "PUT" and path.startswith(PATH + "/"):
                body = handler.body_json() or {}
                with self._state:
                    doc = self.update(path[len(PATH) + 1:], body)
                    handler.send_json(200, {"data": self.document(doc)})
            elif method == "POST" and path == CANCEL_PATH:
                body = handler.body_json() or {}
                if body.get("doctype") != JE:
                    raise FrappeError(417, f"Cannot cancel {body.get('doctype')} here")
                with self._state:
                    self.cancel(body.get("name"))
                handler.send_json(200, {"message": None})
            elif method == "DELETE" and path.startswith(PATH + "/"):
                handler.body_json()
                with self._state:
                    self.delete(path[len(PATH) + 1:], force=False)
                handler.send_json(202, {"message": "ok"})
            else:
                handler.body_json()
                handler.send_json(404, frappe_error(404, "Not found"))
        except FrappeError as exc:
            handler.send_json(exc.status, exc.body)

    # ------------------------------------------------------------------------------------------ posting
    def create(self, handler: StandinHandler) -> None:
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
        with self._state:
            self._store_new(doc)
        if self.on_commit_hook is not None and self.on_commit_hook(doc):
            handler.drop_connection()
            return
        if self.post_fault(handler, fault, frappe_error):
            return
        handler.send_json(200, {"data": doc})

    def _next_name(self) -> str:
        with self._seq_lock:
            self._seq += 1
            return f"ACC-JV-2026-{self._seq:05d}"

    def _store_new(self, doc: dict) -> dict:
        doc["name"] = self._next_name()
        doc.setdefault("docstatus", 0)
        doc["doctype"] = JE
        doc["creation"] = doc["modified"] = self.now()
        for idx, row in enumerate(doc.get("accounts") or [], start=1):
            row.update(idx=idx, name=f"{doc['name']}-row{idx}", parent=doc["name"], parentfield="accounts",
                       parenttype=JE, doctype=JEA)
        self.journals.put(doc)
        if doc["docstatus"] == 1:
            self._make_gl(doc)
        return doc

    def _get(self, name: str) -> dict:
        doc = self.entries.get(name)
        if doc is None:
            raise FrappeError(404, f"Journal Entry {name} not found")
        return doc

    def update(self, name: str, body: dict) -> dict:
        """`PUT`: a draft takes any change (submitted when `docstatus` becomes 1); a submitted entry can only be
        cancelled (`docstatus` 2); a cancelled one cannot change."""
        doc = self._get(name)
        status, wanted = doc["docstatus"], int(body.get("docstatus", doc["docstatus"]))
        changes = {k: v for k, v in body.items() if k != "docstatus" and doc.get(k) != v}
        if status == 2:
            raise FrappeError(417, "Cannot edit cancelled document", "UpdateAfterSubmitError")
        if status == 1:
            if changes:
                raise FrappeError(417, f"Not allowed to change {', '.join(sorted(changes))} after submission",
                                  "UpdateAfterSubmitError")
            if wanted == 2:
                self.cancel(name)
            elif wanted != 1:
                raise FrappeError(417, "Cannot change docstatus from 1 to 0", "DocstatusTransitionError")
            return doc
        doc.update(changes)
        doc["modified"] = self.now()
        if wanted == 1:
            doc["docstatus"] = 1
            self._make_gl(doc)
        elif wanted == 2:
            raise FrappeError(417, "Cannot change docstatus from 0 to 2", "DocstatusTransitionError")
        return doc

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
        debit = sum(Decimal(str(r.get("debit_in_account_currency", "0"))) for r in rows)
        credit = sum(Decimal(str(r.get("credit_in_account_currency", "0"))) for r in rows)
        if debit != credit:
            return f"Total Debit must be equal to Total Credit. The difference is {debit - credit}"
        for row in rows:
            if row.get("account") not in self.accounts:
                return f"Account {row.get('account')} does not exist"
        return None

    # ------------------------------------------------------------------------------------------ the GL
    def _make_gl(self, doc: dict) -> None:
        """GL Entries of a submitted entry: its account rows merged by account and party (ERPNext's
        `merge_similar_entries` sums debits and credits separately)."""
        merged: dict[tuple, dict] = {}
        for row in doc.get("accounts") or []:
            key = (row.get("account"), row.get("party_type") or "", row.get("party") or "")
            entry = merged.setdefault(key, {"debit": Decimal(0), "credit": Decimal(0)})
            entry["debit"] += Decimal(str(row.get("debit_in_account_currency") or 0))
            entry["credit"] += Decimal(str(row.get("credit_in_account_currency") or 0))
        for (account, party_type, party), amounts in merged.items():
            if amounts["debit"] or amounts["credit"]:
                self._gl_row(doc, account, amounts["debit"], amounts["credit"], party_type=party_type, party=party)

    def _gl_row(self, doc: dict, account: str, debit, credit, *, is_cancelled=0, remarks="", **extra) -> None:
        with self._seq_lock:
            self._gl_seq += 1
            name = f"ACC-GLE-2026-{self._gl_seq:05d}"
        now = self.now()
        self.gl.put({"name": name, "doctype": GLE, "docstatus": 1, "company": doc.get("company"), "account": account,
                     "debit": _number(debit), "credit": _number(credit),
                     "debit_in_account_currency": _number(debit), "credit_in_account_currency": _number(credit),
                     "voucher_type": JE, "voucher_no": doc["name"], "posting_date": doc["posting_date"],
                     "is_cancelled": is_cancelled, "remarks": remarks or doc.get("user_remark", ""),
                     "creation": now, "modified": now, **extra})

    def _gl_of(self, name: str) -> list[dict]:
        return [row for row in self.gl.rows.values() if row["voucher_no"] == name]

    # ------------------------------------------------------------------------------------------ reading
    def document(self, doc: dict) -> dict:
        """A stored entry as Frappe answers it: money as JSON numbers."""
        out = {k: v for k, v in doc.items() if k != "accounts"}
        out["accounts"] = [{k: (_number(v) if k in MONEY_FIELDS else v) for k, v in row.items()}
                           for row in doc.get("accounts") or []]
        out["total_debit"] = sum(r.get("debit_in_account_currency", 0) for r in out["accounts"])
        out["total_credit"] = sum(r.get("credit_in_account_currency", 0) for r in out["accounts"])
        return out

    def list_rows(self, doctype: str, query: dict) -> list[dict]:
        """`frappe.get_list` over the parent doctype, left-joining the child table when a field names it."""
        try:
            fields = json.loads(query.get("fields") or '["name"]')
            filters = json.loads(query.get("filters") or "[]")
            or_filters = json.loads(query.get("or_filters") or "[]")
            start = int(query.get("limit_start") or 0)
            length = int(query.get("limit_page_length") if query.get("limit_page_length") is not None else 20)
        except (ValueError, TypeError) as exc:
            raise FrappeError(417, f"Invalid list arguments: {exc}") from None
        if isinstance(fields, str):
            fields = [f.strip() for f in fields.split(",")]
        columns = [self._column(doctype, field) for field in fields]
        joined = any(table != doctype for table, _, _ in columns)
        conditions = [self._condition(doctype, f) for f in self._filter_list(doctype, filters)]
        alternatives = [self._condition(doctype, f) for f in self._filter_list(doctype, or_filters)]
        order = self._order(doctype, query.get("order_by") or "modified desc")
        table = self.journals if doctype == JE else self.gl
        wanted = start + length if length else None

        joined = joined or any(test.table != doctype for test in conditions + alternatives)

        def rows_of(doc):
            children = (doc.get("accounts") or [None]) if joined else [None]
            for child in children:
                values = {doctype: doc, JEA: child or {}}
                if all(test(values) for test in conditions) and \
                        (not alternatives or any(test(values) for test in alternatives)):
                    yield {alias: self._value(values[table_name], field)
                           for table_name, field, alias in columns}, values

        # Keyed paging (`name` > x, ordered by name then row) is served from the sorted names, like an index.
        after = next((test.value for test in conditions if test.field == "name" and test.op == ">"), None)
        if order and order[0] == (doctype, "name", False) and all(t == JEA and f == "idx" and not d
                                                                   for t, f, d in order[1:]):
            names = table.names()
            out = []
            for name in itertools.islice(names, bisect.bisect_right(names, after) if after else 0, None):
                out.extend(row for row, _ in rows_of(table.rows[name]))
                if wanted is not None and len(out) >= wanted:
                    break
            return out[start:wanted]
        matched = [pair for name in table.names() for pair in rows_of(table.rows[name])]
        for table_name, field, descending in reversed(order):
            matched.sort(key=lambda pair: _sort_key(self._value(pair[1][table_name], field)), reverse=descending)
        return [row for row, _ in matched[start:wanted]]

    @staticmethod
    def _column(doctype: str, field: str) -> tuple[str, str, str]:
        match = FIELD.match(field)
        if match is None:
            raise FrappeError(417, f"Field not permitted in query: {field}", "DataError")
        table, name, alias = match.groups()
        table = table or doctype
        if table not in (doctype, JEA) or (table == JEA and doctype != JE):
            raise FrappeError(417, f"Field not permitted in query: {field}", "DataError")
        return table, name, alias or name

    @staticmethod
    def _filter_list(doctype: str, filters) -> list:
        if isinstance(filters, dict):
            return [[doctype, k, *(v if isinstance(v, list) else ["=", v])] for k, v in filters.items()]
        out = []
        for f in filters:
            if not isinstance(f, list) or len(f) not in (3, 4):
                raise FrappeError(417, f"Invalid filter: {f}")
            out.append(f if len(f) == 4 else [doctype, *f])
        return out

    def _condition(self, doctype: str, f: list):
        table, field, op, value = f
        if table not in (doctype, JEA):
            raise FrappeError(417, f"Invalid filter: {f}")
        op = str(op).lower()
        field = self._column(doctype, f"`tab{table}`.{field}")[1]

        def test(values):
            return _matches(self._value(values[table], field), op, value, field)
        test.table, test.field, test.op, test.value = table, field, op, value
        return test

    def _order(self, doctype: str, order_by: str) -> list[tuple[str, str, bool]]:
        out = []
        for part in order_by.split(","):
            match = ORDER.match(part)
            if match is None:
                raise FrappeError(417, f"Invalid order_by: {order_by}", "DataError")
            table, field, _ = self._column(doctype, match.group(1))
            out.append((table, field, (match.group(2) or "asc").lower() == "desc"))
        return out

    @staticmethod
    def _value(row: dict, field: str):
        value = row.get(field)
        if field in MONEY_FIELDS and value is not None:
            return _number(value)
        return value

    # ------------------------------------------------------------------------------------------ the books
    def cancel(self, name: str) -> None:
        """Cancel a submitted entry: its GL Entries flagged, reversing ones added, flagged too."""
        doc = self._get(name)
        if doc["docstatus"] != 1:
            raise FrappeError(417, "Cannot cancel before submitting" if doc["docstatus"] == 0
                              else "Document is already cancelled", "DocstatusTransitionError")
        doc["docstatus"] = 2
        doc["modified"] = self.now()
        for row in self._gl_of(name):
            if not row["is_cancelled"]:
                row["is_cancelled"] = 1
                row["modified"] = doc["modified"]
                self._gl_row(doc, row["account"], row["credit"], row["debit"], is_cancelled=1,
                             remarks=f"On cancellation of {name}")

    def delete(self, name: str, *, force: bool = True) -> None:
        """Delete an entry and its GL Entries; ERPNext refuses a submitted one (`force` cancels it first)."""
        doc = self._get(name)
        if doc["docstatus"] == 1:
            if not force:
                raise FrappeError(417, "Submitted Record cannot be deleted. You must Cancel it first.",
                                  "ValidationError")
            self.cancel(name)
        for row in self._gl_of(name):
            self.gl.drop(row["name"])
        self.journals.drop(name)

    def edit_amount(self, name: str, delta) -> None:
        """Change an entry's amount, both sides: `delta` added to its first debit row and its first credit row
        (it stays balanced); its GL Entries follow."""
        delta = Decimal(str(delta))
        with self._state:
            doc = self._get(name)
            rows = doc["accounts"]
            for side in ("debit_in_account_currency", "credit_in_account_currency"):
                row = next(r for r in rows if Decimal(str(r.get(side) or 0)))
                row[side] = str(Decimal(str(row[side])) + delta)
            self._rebuild_gl(doc)

    def set_posting_date(self, name: str, posting_date: str) -> None:
        with self._state:
            doc = self._get(name)
            doc["posting_date"] = posting_date
            self._rebuild_gl(doc)

    def _rebuild_gl(self, doc: dict) -> None:
        doc["modified"] = self.now()
        if doc["docstatus"] == 1:
            for row in self._gl_of(doc["name"]):
                self.gl.drop(row["name"])
            self._make_gl(doc)

    def add_manual_entry(self, *, account: str, amount, against: str, posting_date: str = "2026-11-01",
                         cheque_no: str | None = None, docstatus: int = 1) -> str:
        """A Journal Entry a person booked in ERPNext: `amount` debited to `account`, credited to `against`,
        without our reference (or with `cheque_no`, e.g. a bank reference)."""
        doc = {"company": self.company, "posting_date": posting_date, "voucher_type": "Journal Entry",
               "user_remark": "Booked by hand", "docstatus": docstatus,
               "accounts": [{"account": account, "debit_in_account_currency": str(amount),
                             "credit_in_account_currency": "0"},
                            {"account": against, "debit_in_account_currency": "0",
                             "credit_in_account_currency": str(amount)}]}
        if cheque_no:
            doc.update(cheque_no=cheque_no, cheque_date=posting_date)
        with self._state:
            return self._store_new(doc)["name"]

    def duplicate(self, name: str) -> str:
        """A second submitted entry copying `name` (its reference too), as "Duplicate" then submit would."""
        with self._state:
            source = self._get(name)
            copy = {k: v for k, v in source.items() if k not in ("name", "creation", "modified", "doctype")}
            copy["accounts"] = [{k: v for k, v in row.items()
                                 if k not in ("name", "idx", "parent", "parentfield", "parenttype", "doctype")}
                                for row in source["accounts"]]
            copy["docstatus"] = 1
            return self._store_new(copy)["name"]

    def seed(self, count: int, *, posting_date: str = "2026-11-01", lines=None, gl: bool = False) -> list[str]:
        """Bulk-load `count` submitted entries, each with a new reference of our form and the given lines
        (account, debit, credit), without HTTP; GL Entries only when `gl` (the documents benchmark needs none).
        Returns their references."""
        lines = lines or [("1200", "107.25", "0"), ("4000", "0", "100.00"), ("2200", "0", "7.25")]
        refs = []
        with self._state:
            for _ in range(count):
                ref = str(uuid.uuid4())
                refs.append(ref)
                doc = self._store_new({
                    "company": self.company, "posting_date": posting_date, "docstatus": 1 if gl else 0,
                    "voucher_type": "Journal Entry", "cheque_no": ref, "cheque_date": posting_date,
                    "user_remark": f"Tieout journal {ref}",
                    "accounts": [{"account": a, "debit_in_account_currency": d, "credit_in_account_currency": c}
                                 for a, d, c in lines]})
                doc["docstatus"] = 1
        return refs


def _sort_key(value):
    return (value is None, value if value is not None else "")


def _matches(actual, op: str, expected, field: str) -> bool:
    if op == "is":
        present = actual not in (None, "")
        return present if expected == "set" else not present
    if field in INT_FIELDS or field in MONEY_FIELDS:
        convert = int if field in INT_FIELDS else float

        def norm(v):
            return convert(v) if v not in (None, "") else convert(0)
    elif field in DATETIME_FIELDS:
        def norm(v):
            return datetime.datetime.fromisoformat(str(v)) if v else datetime.datetime.min
    else:
        def norm(v):
            return "" if v is None else str(v)
    value = norm(actual)
    if op in ("in", "not in"):
        items = expected if isinstance(expected, list) else str(expected).split(",")
        found = value in {norm(item) for item in items}
        return found if op == "in" else not found
    if op == "between":
        low, high = expected
        return norm(low) <= value <= norm(high)
    if op in ("like", "not like"):
        pattern = "^" + ".*".join(re.escape(part) for part in str(expected).split("%")) + "$"
        found = re.match(pattern, str(actual or ""), re.IGNORECASE) is not None
        return found if op == "like" else not found
    other = norm(expected)
    return {"=": value == other, "!=": value != other, "<": value < other, ">": value > other,
            "<=": value <= other, ">=": value >= other}[op] if op in ("=", "!=", "<", ">", "<=", ">=") \
        else _invalid(op)


def _invalid(op):
    raise FrappeError(417, f"Invalid operator {op}")
