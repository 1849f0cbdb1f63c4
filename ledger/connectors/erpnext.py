"""ERPNext (Frappe REST) connector: one submitted Journal Entry per journal, created and submitted in one
request, found again by our journal id in `cheque_no`, and read back for reconciliation (Journal Entries with
their account rows, GL Entries summed per account and month); the API token comes from the environment, never
the database. The wire details (auth, post, look-up, read-back, error answers) are in `ErpNextConnector`'s
docstring."""
import datetime
import json
from collections.abc import Iterable, Iterator
from urllib.parse import quote

import requests

from ledger.connectors.base import ErpDocument, ErpLine, ErpMovement, PermanentError, PostResult
from ledger.connectors.http import HttpConnector
from ledger.connectors.readback import AccountNames, money, movements, our_reference, parse_date

DOCTYPE_PATH = "/api/resource/Journal Entry"
GL_ENTRY_PATH = "/api/resource/GL Entry"
# The child table of a Journal Entry's account rows, named as Frappe's list API names a joined child table.
ROWS = "`tabJournal Entry Account`"
# One row per account row of each entry (a left join on the child table), the entry's own fields repeated.
DOCUMENT_FIELDS = ["name", "cheque_no", "docstatus", "posting_date", "modified",
                   f"{ROWS}.account as account",
                   f"{ROWS}.debit_in_account_currency as debit_in_account_currency",
                   f"{ROWS}.credit_in_account_currency as credit_in_account_currency"]
DOCUMENT_ORDER = f"`tabJournal Entry`.name asc, {ROWS}.idx asc"
GL_FIELDS = ["name", "account", "debit", "credit", "posting_date"]
DOCSTATUS = {0: ErpDocument.Status.DRAFT, 1: ErpDocument.Status.POSTED, 2: ErpDocument.Status.CANCELLED}


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

    Read-back (reconciliation), read-only, every request through `retrying` (retried, counted):

    - Documents: `GET /api/resource/Journal Entry` with `fields` = the entry's `name`, `cheque_no`, `docstatus`,
      `posting_date`, `modified` and its account rows' `account`, `debit_in_account_currency`,
      `credit_in_account_currency` named through the child table (`` `tabJournal Entry Account`.account ``),
      `filters` = company, `posting_date` between the run's dates, `cheque_no` is set, and `modified` >= the
      incremental run's start, `order_by` = name then row `idx`, `limit_start=0`, `limit_page_length` =
      the entity's `page_size` (default 500). Frappe's list API (`frappe.get_list`, `DatabaseQuery`) left-joins a
      child table named in `fields` on `parent = name` and returns one row per account row, so one request
      reads a page of entries *with* their lines. The alternative, one `GET /api/resource/Journal Entry/{name}`
      per entry after listing names, costs a request per document: 100,000 documents at 20 ms are 33 minutes
      of latency alone, against about 600 requests (12 s) this way. Reading lines from GL Entry instead would
      not do: ERPNext merges an entry's rows per account/party/cost centre there, and drafts have none.
    - Paging is by key, not offset: each page asks for `name` > the last entry read completely. A page that
      comes back full may end inside an entry, so its last entry is read again on the next page (an entry
      longer than a whole page is read alone by `GET .../{name}`). Offset paging would skip or repeat entries
      when entries are created, cancelled or deleted between pages, and costs the ERP's database the offset.
    - One document: `GET /api/resource/Journal Entry/{name}` (the `accounts` child rows come with it); 404
      (`DoesNotExistError`) means ERPNext no longer has it.
    - Movements: `GET /api/resource/GL Entry` with `fields` name, account, debit, credit, posting_date;
      `filters` company, `posting_date` between, `is_cancelled` = 0 (a cancelled voucher's entries and their
      reversals are all flagged), `account` in the ERP names of the accounts asked; paged by `name` the same
      way; summed per account and month here (Frappe's list API has no portable monthly grouping).
    - `docstatus` 1 is posted, 2 cancelled, 0 draft. `cheque_no` values that are not one of our references
      (a bank reference typed by a person) are not our documents. Frappe stores `modified` as naive time in
      the site's time zone: the entity's `time_zone` setting (default UTC) converts both ways.
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
        # `.all()` (not a filtered query): a claim prefetches the mappings, the posting threads read no database.
        receivable = {m.account_id for m in journal.entity.mappings.all() if m.role == "receivable"}
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

    # ------------------------------------------------------------------------------------------- read-back
    def _company(self) -> str:
        company = self.settings.get("company")
        if not company:
            raise PermanentError(f"entity {self.entity.code}: ERPNext company is not configured")
        return company

    def _list(self, path: str, *, fields: list, filters: list, order_by: str, after: str | None) -> list[dict]:
        """One page of Frappe's list API, keyed after `after` (a `name`)."""
        page_filters = filters + ([["name", ">", after]] if after is not None else [])
        params = {"fields": json.dumps(fields), "filters": json.dumps(page_filters), "order_by": order_by,
                  "limit_start": 0, "limit_page_length": self.page_size}
        body = self.read_json("GET", path, params=params)
        rows = body.get("data") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise PermanentError("ERPNext answered a list request without a `data` list", erp_message=str(body)[:500])
        return rows

    def _pages(self, path: str, *, fields: list, filters: list, order_by: str,
               rows_per_name: bool = True) -> Iterator[list[list[dict]]]:
        """Every row of a list query, page by page, each page a list of whole groups of rows sharing a `name`
        (an entry with its account rows; with `rows_per_name` False, one row per name, as GL Entries are)."""
        after = None
        while True:
            rows = self._list(path, fields=fields, filters=filters, order_by=order_by, after=after)
            groups: list[list[dict]] = []
            for row in rows:
                if groups and groups[-1][0]["name"] == row["name"]:
                    groups[-1].append(row)
                else:
                    groups.append([row])
            if len(rows) < self.page_size:
                yield groups
                return
            if not rows_per_name:
                after = groups[-1][0]["name"]
            elif len(groups) == 1:
                # One entry filled the whole page: it may have more rows still; read it on its own.
                after = groups[0][0]["name"]
                groups = [self._document_rows(after)]
            else:
                groups.pop()  # the page may have ended inside its last entry: read that one again next time
                after = groups[-1][0]["name"]
            yield groups

    def _document_rows(self, name: str) -> list[dict]:
        """An entry read alone, as list rows (the shape `_pages` yields)."""
        doc = self._get_document(name)
        if doc is None:
            return [{"name": name, "cheque_no": None, "docstatus": None}]
        head = {key: doc.get(key) for key in ("name", "cheque_no", "docstatus", "posting_date", "modified")}
        rows = [{**head, "account": row.get("account"),
                 "debit_in_account_currency": row.get("debit_in_account_currency"),
                 "credit_in_account_currency": row.get("credit_in_account_currency")}
                for row in sorted(doc.get("accounts") or [], key=lambda r: r.get("idx") or 0)]
        return rows or [{**head, "account": None}]

    def _get_document(self, name: str) -> dict | None:
        try:
            body = self.read_json("GET", f"{DOCTYPE_PATH}/{quote(name, safe='')}")
        except PermanentError as exc:
            if getattr(exc, "http_status", None) == 404:
                return None
            raise
        return body.get("data") if isinstance(body, dict) else None

    def _document(self, rows: list[dict], names: AccountNames, *, ours_only: bool) -> ErpDocument | None:
        head = rows[0]
        ref = our_reference(head.get("cheque_no"))
        if head.get("docstatus") is None or (ours_only and ref is None):
            return None
        currency = self.entity.currency
        lines = tuple(ErpLine(account=names.ours(row["account"]),
                              debit=money(row.get("debit_in_account_currency"), currency),
                              credit=money(row.get("credit_in_account_currency"), currency))
                      for row in rows if row.get("account"))
        return ErpDocument(ref=head["name"], our_ref=ref or "", status=DOCSTATUS.get(int(head["docstatus"]), "draft"),
                           posting_date=parse_date(head["posting_date"]), lines=lines,
                           modified=self.from_erp_time(head.get("modified")))

    def erp_documents(self, *, date_from: datetime.date, date_to: datetime.date,
                      modified_since: datetime.datetime | None = None) -> Iterator[ErpDocument]:
        filters = [["company", "=", self._company()],
                   ["posting_date", "between", [date_from.isoformat(), date_to.isoformat()]],
                   ["cheque_no", "is", "set"]]
        if modified_since is not None:
            filters.append(["modified", ">=", self.erp_time(modified_since).isoformat(sep=" ")])
        names = AccountNames(self.entity)
        for groups in self._pages(DOCTYPE_PATH, fields=DOCUMENT_FIELDS, filters=filters, order_by=DOCUMENT_ORDER):
            for rows in groups:
                document = self._document(rows, names, ours_only=True)
                if document is not None:
                    yield document

    def erp_document(self, ref: str) -> ErpDocument | None:
        rows = self._document_rows(ref)
        return self._document(rows, AccountNames(self.entity), ours_only=False)

    def account_movements(self, *, date_from: datetime.date, date_to: datetime.date,
                          accounts: Iterable[str]) -> Iterator[ErpMovement]:
        names = AccountNames(self.entity)
        erp_names = sorted({names.erp(code) for code in accounts})
        if not erp_names:
            return
        filters = [["company", "=", self._company()],
                   ["posting_date", "between", [date_from.isoformat(), date_to.isoformat()]],
                   ["is_cancelled", "=", 0], ["account", "in", erp_names]]
        currency = self.entity.currency

        def rows():
            for groups in self._pages(GL_ENTRY_PATH, fields=GL_FIELDS, filters=filters, order_by="name asc",
                                      rows_per_name=False):
                for (row,) in groups:
                    yield (names.ours(row["account"]), str(row["posting_date"])[:7],
                           money(row.get("debit"), currency), money(row.get("credit"), currency))

        yield from movements(rows())
