"""Odoo connector: one posted `account.move` (a miscellaneous journal entry) per journal, over JSON-2 (Odoo
19+, the default) or JSON-RPC (older versions), chosen per entity; created, then posted, then its `name`
read back as our ERP document reference, found again by `ref` = our journal id, and read back for
reconciliation (moves with their lines, posted lines grouped per account and month). The APIs, settings,
posting and read-back steps are in `OdooConnector`'s docstring, the failure classes in
`classify_odoo_error`'s."""
import datetime
import itertools
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal

import requests

from ledger.connectors.base import (AmbiguousError, ConnectorError, ErpDocument, ErpLine, ErpMovement, PermanentError,
                                   PostResult, TransientError)
from ledger.connectors.http import HttpConnector
from ledger.connectors.readback import AccountNames, money, movements, our_reference, parse_date

JSON2 = "json2"
JSONRPC = "jsonrpc"
APIS = (JSON2, JSONRPC)
ACCOUNT_ID_PREFIX = "id:"  # `Account.erp_account` = "id:42" names an Odoo account by id, anything else by code
USER_AGENT = "tieout-odoo-connector/1"

# Exceptions that roll back and mean "try again": a row lock not obtained, a serialisation failure or
# deadlock (PostgreSQL; psycopg2 before Odoo 19's psycopg 3), Odoo's own ConcurrencyError, and the
# database connection dropping under the server.
TRANSIENT_EXCEPTIONS = {
    "LockError", "ConcurrencyError", "SerializationFailure", "DeadlockDetected", "LockNotAvailable",
    "TransactionRollbackError", "OperationalError", "InterfaceError", "PoolError", "ServiceUnavailable",
    "TooManyRequests", "GatewayTimeout", "BadGateway", "InternalServerError",
}
TRANSIENT_MESSAGES = ("could not serialize access", "deadlock detected", "could not obtain lock",
                      "server closed the connection unexpectedly")
# ... except a database that does not exist, which Odoo reports as an OperationalError as well.
MISSING_DATABASE = re.compile(r'database "[^"]*" does not exist')
# werkzeug's client errors are a wrong URL, method or body: sending it again will not help.
PERMANENT_WERKZEUG = {"NotFound", "BadRequest", "Unauthorized", "Forbidden", "MethodNotAllowed",
                      "UnsupportedMediaType", "UnprocessableEntity", "Conflict", "Gone"}
JSONRPC_SESSION_EXPIRED = 100
_rpc_ids = itertools.count(1)
MOVE_FIELDS = ["id", "name", "ref", "state", "date", "write_date"]
LINE_FIELDS = ["move_id", "account_id", "debit", "credit"]
MOVE_STATES = {"posted": ErpDocument.Status.POSTED, "cancel": ErpDocument.Status.CANCELLED,
               "draft": ErpDocument.Status.DRAFT}
ODOO_DATETIME = "%Y-%m-%d %H:%M:%S"  # Odoo's Datetime fields: naive text, always UTC


class OdooMessage(str):
    """An error message that also carries the Odoo exception name it was parsed from.

    `HttpConnector.request` turns a non-2xx answer into a failure class from the status alone and keeps
    our `error_message(response)` as `erp_message`; the name rides along on that string so that the few
    statuses whose meaning depends on the exception (409 `LockError` is a lock conflict, not a duplicate)
    can be reclassified without re-implementing the transport classification.
    """

    odoo_name = ""

    def __new__(cls, text: str, odoo_name: str = ""):
        value = super().__new__(cls, text)
        value.odoo_name = odoo_name
        return value


def odoo_error(body) -> tuple[str, str]:
    """(exception name, message) of an Odoo error body: JSON-2's serialised exception, a JSON-RPC `error`
    object (or the whole JSON-RPC answer), or the bare JSON string some JSON-2 errors are."""
    if isinstance(body, str):
        return "", body
    if not isinstance(body, dict):
        return "", ""
    if isinstance(body.get("error"), dict):
        body = body["error"]
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    name = str(data.get("name") or body.get("name") or "")
    message = data.get("message") or body.get("message") or ""
    if not message:
        arguments = data.get("arguments") or body.get("arguments") or []
        message = str(arguments[0]) if arguments else ""
    return name, str(message)


def classify_odoo_error(name: str, message: str, *, code=None) -> type[ConnectorError]:
    """The failure class of an Odoo exception that was rolled back.

    Every Odoo call runs in one transaction that Odoo rolls back when it raises, so an error answer means
    nothing was applied. Odoo's user-facing exceptions (validation, access, missing record) are permanent;
    lock and serialisation conflicts (which Odoo already retried itself, five times) are transient; any other
    server exception is transient too, exactly as the same exception is over JSON-2, where Odoo answers it
    with a 500 — a deterministic bug therefore ends as a `posting_failed` exception after the bounded
    retries, carrying Odoo's message, not as an endless loop.
    """
    short = name.rsplit(".", 1)[-1]
    if MISSING_DATABASE.search(message):
        return PermanentError
    if short in TRANSIENT_EXCEPTIONS or any(text in message.lower() for text in TRANSIENT_MESSAGES):
        return TransientError
    if code == JSONRPC_SESSION_EXPIRED or code == 404:
        return PermanentError
    if name.startswith("odoo.exceptions.") or name.startswith("openerp.exceptions."):
        return PermanentError  # UserError, ValidationError, AccessError, AccessDenied, MissingError, ...
    if name.startswith("werkzeug.exceptions.") and short in PERMANENT_WERKZEUG:
        return PermanentError
    return TransientError


def float_amount(amount: Decimal) -> float:
    """Odoo's JSON takes money as a JSON number: convert at the wire, and refuse a lossy conversion."""
    value = float(amount)
    if Decimal(repr(value)) != amount:
        raise PermanentError(f"amount {amount} cannot be sent to Odoo as a JSON number without rounding")
    return value


def move_lines(lines, accounts: dict[str, int], *, default_label: str) -> list:
    """`line_ids` commands for our journal lines; the totals must balance before anything is converted."""
    debit = sum((line.debit for line in lines), Decimal("0"))
    credit = sum((line.credit for line in lines), Decimal("0"))
    if not lines or debit != credit:
        raise PermanentError(f"journal does not balance (debit {debit}, credit {credit}); not sent to Odoo")
    commands = []
    for line in lines:
        label = line.memo or default_label
        if line.customer_id:
            label = f"{label} [{line.customer_id}]"
        commands.append([0, 0, {"account_id": accounts[line.account.code], "name": label[:250],
                                "debit": float_amount(line.debit), "credit": float_amount(line.credit)}])
    return commands


class OdooConnector(HttpConnector):
    """One posted `account.move` (a miscellaneous journal entry) per journal.

    Two APIs, chosen per entity by the `api` setting:

    - `json2` (default, Odoo 19+): `POST /json/2/<model>/<method>` with a JSON object of named arguments
      (`ids`, `context` and the method's own parameters), `Authorization: bearer <api key>` and
      `X-Odoo-Database: <db>`. Success is HTTP 200 with the method's return value as the body; an error is a
      4xx/5xx with Odoo's serialised exception (`name`, `message`, `arguments`, `context`, `debug`). The
      status comes from the exception: `UserError`/`ValidationError` 422, `AccessError`/`AccessDenied` 403,
      `MissingError` 404, `LockError` 409, a bad key 401, anything else 500.
    - `jsonrpc` (older versions; deprecated in 19, to be removed in 22): `POST /jsonrpc` with a JSON-RPC 2.0
      envelope; `common.authenticate(db, login, password, {})` gives the uid (False when refused), then
      `object.execute_kw(db, uid, password, model, method, args, kwargs)`. Errors come back with HTTP 200 and
      `{"error": {"code", "message": "Odoo Server Error", "data": {"name", "message", "arguments", "debug"}}}`.

    Settings (`Entity.erp_settings`): `url`, `database`, `api`, `token_env` (the environment variable holding
    the API key, or the password for `jsonrpc`), `username` (the `jsonrpc` login), `journal_id` (optional Odoo
    journal id; Odoo picks its default miscellaneous journal otherwise).

    Post: `account.move.create` with `move_type: "entry"`, `ref` = our journal id, `date`, optional
    `journal_id`, and `line_ids` as `(0, 0, vals)` commands; then `action_post` (Odoo refuses to create a
    move already posted, so it takes two calls, each its own transaction); then the move's `name` (e.g.
    `MISC/2026/11/0001`, assigned when posting) is read back and becomes our ERP document reference.

    Look-up: `search_read` on `ref`. A posted move is ours; a draft is one an earlier attempt created but
    did not post, so it is posted now instead of creating a second one; a cancelled move does not count.

    Read-back (reconciliation), read-only, every call through `retrying` (retried, counted):

    - Documents: `account.move` `search_read` with domain `move_type` = entry, `ref` set, `date` in the run's
      range, `write_date` >= the incremental run's start (UTC, as Odoo stores it), and `id` > the last id of
      the previous page; `order` "id asc", `limit` = the entity's `page_size` (default 500); fields id, name,
      ref, state, date, write_date. Then the lines of that page's moves in one `account.move.line`
      `search_read` (`move_id` in the page's ids; move_id, account_id, debit, credit). Two calls per page of
      moves. Paging by id rather than offset: moves created or deleted while reading move the offsets.
      `state` posted/cancel/draft; `ref` values that are not our references are someone else's.
    - One document: the same by `name` (a draft without a number, "/", is asked for as `id:<n>`).
    - Movements: posted lines (`parent_state` = posted) of the accounts asked, grouped by `account_id` and
      `date:month`: `formatted_read_group` (groupby, aggregates `debit:sum`, `credit:sum`) on JSON-2, Odoo 19's
      public grouping method; `read_group` (fields `debit:sum`, `credit:sum`, `lazy` false) on JSON-RPC, whose
      month comes from the group's `__range` (its label is localised). One call: the groups are accounts x
      months.
    - Accounts: Odoo answers `account_id` as [id, display name]; ids map back to our codes through the
      mapping (`id:<n>`, or the Odoo code resolved by one `account.account` `search_read`); an account we
      do not map keeps its Odoo code. The optional `company_id` setting narrows every read to one company.
    """

    name = "odoo"

    def __init__(self, entity):
        super().__init__(entity)
        self.api = (self.settings.get("api") or JSON2).lower()
        if self.api not in APIS:
            raise PermanentError(f"entity {entity.code}: Odoo api must be one of {', '.join(APIS)}, not {self.api!r}")
        self.database = self.settings.get("database") or ""
        journal_id = self.settings.get("journal_id")
        try:
            self.journal_id = int(journal_id) if journal_id not in (None, "") else None
        except (TypeError, ValueError):
            raise PermanentError(f"entity {entity.code}: Odoo journal_id must be an integer id") from None
        self._account_ids: dict[str, list[int]] = {}  # Odoo account code -> ids, per connector instance
        self._uid: int | None = None
        self._read_accounts: dict[int, str] | None = None  # read-back: Odoo account id -> our code, once

    # ---------------------------------------------------------------------------------------- transport
    def auth_headers(self) -> dict:
        if self.api != JSON2:
            return {"User-Agent": USER_AGENT}  # JSON-RPC carries the credentials in every call's arguments
        headers = {"Authorization": f"bearer {self.secret('token_env')}", "User-Agent": USER_AGENT}
        if self.database:
            # Needed when one Odoo serves several databases and dbfilter does not follow the Host header.
            headers["X-Odoo-Database"] = self.database
        return headers

    def error_message(self, response: requests.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            body = None
        name, message = odoo_error(body)
        detail = f"{name}: {message}" if name else (message or response.text[:500].strip())
        return OdooMessage(f"HTTP {response.status_code}: {detail}", name)

    def _json2(self, model: str, method: str, body: dict, *, write: bool):
        try:
            response = self.request("POST", f"/json/2/{model}/{method}", write=write, json=body)
        except PermanentError as exc:
            name = getattr(exc.erp_message, "odoo_name", "")
            if name and classify_odoo_error(name, exc.erp_message) is TransientError:
                # e.g. 409 LockError: the record was locked by another transaction and ours rolled back.
                raise TransientError(f"Odoo {name.rsplit('.', 1)[-1]}, rolled back", erp_message=exc.erp_message) \
                    from exc
            raise
        return self._json_body(response, write=write)

    def _json_body(self, response: requests.Response, *, write: bool):
        try:
            return response.json()
        except ValueError:
            # A 200 that is not JSON (a proxy's page): whether a write went through is unknown.
            klass = AmbiguousError if write else TransientError
            raise klass("Odoo answered 200 with a body that is not JSON",
                        erp_message=f"HTTP {response.status_code}: {response.text[:500]}") from None

    def _rpc(self, service: str, method: str, args: list, *, write: bool):
        payload = {"jsonrpc": "2.0", "method": "call", "id": next(_rpc_ids),
                   "params": {"service": service, "method": method, "args": args}}
        body = self._json_body(self.request("POST", "/jsonrpc", write=write, json=payload), write=write)
        if not isinstance(body, dict):
            klass = AmbiguousError if write else TransientError
            raise klass("Odoo answered with something that is not a JSON-RPC response", erp_message=str(body)[:500])
        error = body.get("error")
        if error:
            # JSON-RPC errors arrive with HTTP 200: classify Odoo's exception, not the status.
            name, message = odoo_error(error)
            code = error.get("code") if isinstance(error, dict) else None
            erp_message = f"JSON-RPC error {code}: {name + ': ' if name else ''}{message}"
            klass = classify_odoo_error(name, message, code=code)
            raise klass(f"Odoo refused {service}.{method}" if klass is PermanentError
                        else f"Odoo failed {service}.{method}; rolled back", erp_message=erp_message)
        return body.get("result")

    def uid(self) -> int:
        if self._uid is None:
            for key in ("database", "username"):
                if not self.settings.get(key):
                    raise PermanentError(f"entity {self.entity.code}: Odoo {key} is required for the jsonrpc API")
            uid = self._rpc("common", "authenticate",
                            [self.database, self.settings["username"], self.secret("token_env"), {}], write=False)
            if not uid:
                # authenticate answers False, not an error, when the login or password is wrong.
                raise PermanentError("Odoo refused the login",
                                     erp_message=f"authentication failed for {self.settings['username']} "
                                                 f"on database {self.database}")
            self._uid = int(uid)
        return self._uid

    def execute_kw(self, model: str, method: str, args: list, kwargs: dict | None = None, *, write: bool):
        return self._rpc("object", "execute_kw", [self.database, self.uid(), self.secret("token_env"), model, method,
                                                  args, kwargs or {}], write=write)

    # ---------------------------------------------------------------------------------------- ORM calls
    def search_read(self, model: str, domain: list, fields: list, *, limit: int | None = None,
                    order: str | None = None) -> list[dict]:
        options = {key: value for key, value in (("limit", limit), ("order", order)) if value is not None}
        if self.api == JSON2:
            rows = self._json2(model, "search_read", {"domain": domain, "fields": fields, **options}, write=False)
        else:
            rows = self.execute_kw(model, "search_read", [domain], {"fields": fields, **options}, write=False)
        return rows or []

    def read(self, model: str, ids: list[int], fields: list) -> list[dict]:
        if self.api == JSON2:
            return self._json2(model, "read", {"ids": ids, "fields": fields}, write=False) or []
        return self.execute_kw(model, "read", [ids], {"fields": fields}, write=False) or []

    def create(self, model: str, vals: dict) -> int:
        if self.api == JSON2:
            result = self._json2(model, "create", {"vals_list": [vals]}, write=True)
        else:
            # One dict (not a list) is what every version's execute_kw create accepts; it returns one id.
            result = self.execute_kw(model, "create", [vals], write=True)
        ids = result if isinstance(result, list) else [result]
        if len(ids) != 1 or not isinstance(ids[0], int):
            raise AmbiguousError(f"Odoo's create answered {result!r}, not one id")
        return ids[0]

    def action_post(self, move_ids: list[int]) -> None:
        if self.api == JSON2:
            self._json2("account.move", "action_post", {"ids": move_ids}, write=True)
        else:
            self.execute_kw("account.move", "action_post", [move_ids], write=True)

    # ---------------------------------------------------------------------------------------- accounts
    def odoo_accounts(self, lines) -> dict[str, int]:
        """Our account code → Odoo `account.account` id: `id:<n>` in the mapping, else by Odoo code
        (the mapping's, or our own code when unmapped), resolved in one `search_read` and cached."""
        wanted: dict[str, str] = {}
        resolved: dict[str, int] = {}
        for line in lines:
            mapped = (line.account.erp_account or "").strip()
            if mapped.lower().startswith(ACCOUNT_ID_PREFIX):
                try:
                    resolved[line.account.code] = int(mapped[len(ACCOUNT_ID_PREFIX):])
                except ValueError:
                    raise PermanentError(f"account {line.account.code}: Odoo account {mapped!r} is not an id") from None
            else:
                wanted[line.account.code] = mapped or line.account.code
        missing = sorted({code for code in wanted.values() if code not in self._account_ids})
        if missing:
            for code in missing:
                self._account_ids[code] = []
            for row in self.search_read("account.account", [["code", "in", missing]], ["id", "code"]):
                self._account_ids.setdefault(row["code"], []).append(row["id"])
        for ours, odoo_code in wanted.items():
            ids = self._account_ids.get(odoo_code) or []
            if not ids:
                raise PermanentError(f"Odoo has no account with code {odoo_code} (for our account {ours})")
            if len(ids) > 1:
                raise PermanentError(f"Odoo has {len(ids)} accounts with code {odoo_code}: map our account {ours} "
                                     f"to one of them as {ACCOUNT_ID_PREFIX}<id>")
            resolved[ours] = ids[0]
        return resolved

    # ---------------------------------------------------------------------------------------- interface
    def move_vals(self, journal) -> dict:
        label = journal.description or f"Tieout journal {journal.pk}"
        lines = list(journal.lines.select_related("account"))
        vals = {"move_type": "entry", "ref": str(journal.pk), "date": journal.accounting_date.isoformat(),
                "line_ids": move_lines(lines, self.odoo_accounts(lines), default_label=label)}
        if self.journal_id:
            vals["journal_id"] = self.journal_id
        return vals

    def _move_name(self, move_id: int) -> str:
        rows = self.read("account.move", [move_id], ["name", "state"])
        if not rows or rows[0].get("state") != "posted" or not rows[0].get("name"):
            raise AmbiguousError(f"Odoo move {move_id} is not posted after action_post",
                                 erp_message=str(rows[:1])[:500])
        return rows[0]["name"]

    def post_journal(self, journal) -> PostResult:
        vals = self.move_vals(journal)
        move_id = self.create("account.move", vals)
        # From here the move exists in Odoo. Whatever fails next, the next attempt looks it up by `ref`
        # (journal_post always does after an attempt) and posts the draft: it must never create again.
        try:
            self.action_post([move_id])
        except PermanentError as exc:
            raise PermanentError(f"Odoo refused to post move {move_id} (left as a draft; a retry posts it)",
                                 erp_message=exc.erp_message) from exc
        except ConnectorError as exc:
            raise AmbiguousError(f"Odoo created move {move_id} but posting it failed: {exc}",
                                 erp_message=exc.erp_message, retry_after=exc.retry_after) from exc
        try:
            return PostResult(self._move_name(move_id))
        except ConnectorError as exc:
            raise AmbiguousError(f"Odoo posted move {move_id} but reading its number failed: {exc}",
                                 erp_message=exc.erp_message, retry_after=exc.retry_after) from exc

    def lookup(self, journal) -> PostResult | None:
        rows = self.search_read("account.move", [["ref", "=", str(journal.pk)]], ["id", "name", "state"])
        rows = [row for row in rows if row.get("state") in ("draft", "posted")]  # a cancelled move is not ours
        if not rows:
            return None
        posted = [row for row in rows if row["state"] == "posted"]
        if posted:
            row = min(posted, key=lambda r: r["id"])
            return PostResult(row["name"], already_existed=True)
        # Created by an earlier attempt that never posted it: post that draft rather than create another.
        move_id = min(row["id"] for row in rows)
        self.action_post([move_id])
        return PostResult(self._move_name(move_id), already_existed=True)

    # ---------------------------------------------------------------------------------------- read-back
    def _company_domain(self) -> list:
        company = self.settings.get("company_id")
        return [["company_id", "=", int(company)]] if company not in (None, "") else []

    def _account_index(self, names: AccountNames) -> dict[int, str]:
        """Odoo account id -> our account code, for the entity's accounts Odoo has (one `search_read`)."""
        by_id: dict[int, str] = {}
        by_code: dict[str, str] = {}
        for ours, erp_name in names.to_erp.items():
            if erp_name.lower().startswith(ACCOUNT_ID_PREFIX):
                try:
                    by_id.setdefault(int(erp_name[len(ACCOUNT_ID_PREFIX):]), ours)
                except ValueError:
                    continue
            else:
                by_code.setdefault(erp_name, ours)
        if by_code:
            rows = self.retrying(self.search_read, "account.account", [["code", "in", sorted(by_code)]], ["id", "code"])
            for row in rows:
                by_id.setdefault(row["id"], by_code[row["code"]])
        return by_id

    def _accounts(self) -> dict[int, str]:
        """`_account_index` of the entity's accounts, asked once per connector: a reconciliation run makes one and
        may look many documents up one by one, each of which would otherwise ask Odoo for the accounts again."""
        if self._read_accounts is None:
            self._read_accounts = self._account_index(AccountNames(self.entity))
        return self._read_accounts

    def _our_account(self, value, index: dict[int, str], unknown: dict[int, str]) -> str:
        account_id = value[0] if isinstance(value, list) else value
        if account_id in index:
            return index[account_id]
        return unknown.get(account_id) or (value[1].split(" ", 1)[0] if isinstance(value, list) else str(value))

    def _unknown_accounts(self, lines: list[dict], index: dict[int, str]) -> dict[int, str]:
        """The Odoo codes of accounts on these lines that we do not map (one `read`, only when there are)."""
        ids = sorted({(row["account_id"][0] if isinstance(row["account_id"], list) else row["account_id"])
                      for row in lines if row.get("account_id")} - set(index))
        if not ids:
            return {}
        return {row["id"]: row["code"] for row in self.retrying(self.read, "account.account", ids, ["code"])}

    def _documents(self, moves: list[dict], index: dict[int, str]) -> list[ErpDocument]:
        """The moves with their lines: one `search_read` on account.move.line for all of them."""
        if not moves:
            return []
        lines = self.retrying(self.search_read, "account.move.line", [["move_id", "in", [m["id"] for m in moves]]],
                              LINE_FIELDS, order="move_id asc, id asc")
        unknown = self._unknown_accounts(lines, index)
        by_move: dict[int, list[ErpLine]] = {}
        currency = self.entity.currency
        for row in lines:
            move_id = row["move_id"][0] if isinstance(row["move_id"], list) else row["move_id"]
            by_move.setdefault(move_id, []).append(ErpLine(account=self._our_account(row["account_id"], index, unknown),
                                                           debit=money(row.get("debit"), currency),
                                                           credit=money(row.get("credit"), currency)))
        return [ErpDocument(ref=move["name"] if move.get("name") not in (None, False, "", "/")
                            else f"{ACCOUNT_ID_PREFIX}{move['id']}",
                            our_ref=our_reference(move.get("ref")) or "",
                            status=MOVE_STATES.get(move.get("state"), ErpDocument.Status.DRAFT),
                            posting_date=parse_date(move["date"]), lines=tuple(by_move.get(move["id"], ())),
                            modified=_odoo_time(move.get("write_date")))
                for move in moves]

    def erp_documents(self, *, date_from: datetime.date, date_to: datetime.date,
                      modified_since: datetime.datetime | None = None) -> Iterator[ErpDocument]:
        domain = [["move_type", "=", "entry"], ["ref", "!=", False], ["date", ">=", date_from.isoformat()],
                  ["date", "<=", date_to.isoformat()], *self._company_domain()]
        if modified_since is not None:
            domain.append(["write_date", ">=", modified_since.astimezone(datetime.UTC).strftime(ODOO_DATETIME)])
        index = self._accounts()
        after = 0
        while True:
            moves = self.retrying(self.search_read, "account.move", [*domain, ["id", ">", after]], MOVE_FIELDS,
                                  limit=self.page_size, order="id asc")
            yield from self._documents([m for m in moves if our_reference(m.get("ref"))], index)
            if len(moves) < self.page_size:
                return
            after = moves[-1]["id"]

    def erp_document(self, ref: str) -> ErpDocument | None:
        if ref.lower().startswith(ACCOUNT_ID_PREFIX) and ref[len(ACCOUNT_ID_PREFIX):].isdigit():
            domain = [["id", "=", int(ref[len(ACCOUNT_ID_PREFIX):])]]
        else:
            domain = [["name", "=", ref]]
        moves = self.retrying(self.search_read, "account.move", domain, MOVE_FIELDS, limit=1, order="id asc")
        if not moves:
            return None
        [document] = self._documents(moves, self._accounts())
        return document

    def account_movements(self, *, date_from: datetime.date, date_to: datetime.date,
                          accounts: Iterable[str]) -> Iterator[ErpMovement]:
        wanted = set(accounts)
        index = self._accounts()
        ids = sorted(account_id for account_id, code in index.items() if code in wanted)
        if not ids:
            return
        domain = [["parent_state", "=", "posted"], ["date", ">=", date_from.isoformat()],
                  ["date", "<=", date_to.isoformat()], ["account_id", "in", ids], *self._company_domain()]
        groupby = ["account_id", "date:month"]
        if self.api == JSON2:
            groups = self.retrying(self._json2, "account.move.line", "formatted_read_group",
                                   {"domain": domain, "groupby": groupby, "aggregates": ["debit:sum", "credit:sum"]},
                                   write=False) or []
            keys = ("debit:sum", "credit:sum")
        else:
            groups = self.retrying(self.execute_kw, "account.move.line", "read_group",
                                   [domain, ["debit:sum", "credit:sum"], groupby], {"lazy": False}, write=False) or []
            keys = ("debit", "credit")
        currency = self.entity.currency
        yield from movements((self._our_account(group["account_id"], index, {}), _group_month(group),
                              money(group.get(keys[0]), currency), money(group.get(keys[1]), currency))
                             for group in groups)

    def test_connection(self) -> str:
        if self.api == JSON2:
            context = self._json2("res.users", "context_get", {}, write=False) or {}
            return f"connected to Odoo database {self.database or '(default)'} as uid {context.get('uid')} (JSON-2)"
        version = (self._rpc("common", "version", [], write=False) or {}).get("server_version", "?")
        return f"connected to Odoo {version} database {self.database} as uid {self.uid()} (JSON-RPC)"


def _odoo_time(value) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.strptime(str(value)[:19], ODOO_DATETIME).replace(tzinfo=datetime.UTC)


def _group_month(group: dict) -> str:
    """YYYY-MM of a `date:month` group: `formatted_read_group` answers [first day, label]; `read_group` a
    localised label ("November 2026") and the group's `__range` {"date:month": {"from", "to"}}."""
    value = group.get("date:month")
    if isinstance(value, list) and value:
        return str(value[0])[:7]
    period = (group.get("__range") or {}).get("date:month") or {}
    if period.get("from"):
        return str(period["from"])[:7]
    raise PermanentError(f"Odoo answered a month group without its dates: {str(group)[:300]}")
