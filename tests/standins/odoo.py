"""An Odoo stand-in speaking both external APIs, following Odoo's own sources and documentation:

- JSON-2 (Odoo 19, `addons/rpc/controllers/json2.py`, `odoo/http.py: Json2Dispatcher`):
  `POST /json/2/<model>/<method>`, named arguments in a JSON object (`ids`, `context`, the method's
  parameters), `Authorization: bearer <key>` (401 `werkzeug.exceptions.Unauthorized` "Invalid apikey"
  otherwise), `X-Odoo-Database` (on a multi-database server an unknown or missing database is a plain
  404 HTML page). The return value is the body (`create` answers the list of new ids); an error is the
  serialised exception `{name, message, arguments, context, debug}` with the exception's status:
  UserError/ValidationError 422, AccessError/AccessDenied 403, MissingError 404, LockError 409, others 500.
- JSON-RPC (`/jsonrpc`, `odoo/service/common.py`, `odoo/service/model.py`): `common.version`,
  `common.authenticate`/`login` (False on bad credentials), `object.execute_kw(db, uid, password, model,
  method, args, kwargs)` (AccessDenied on a bad uid/password). Every error is HTTP 200 with
  `{"error": {"code": 200, "message": "Odoo Server Error", "data": {name, message, arguments, context,
  debug}}}` (Odoo 19 sends code 0; earlier versions 200; clients must not rely on it).

Models: `account.account` (codes 1010 ... 6200 with integer ids unrelated to the codes; `search_read`,
`read`), `account.move` (`create`, `action_post`, `search_read`, `read`, `button_cancel`), `account.move.line`
(`search_read`; `read_group` as Odoo 17 answers it over JSON-RPC: aggregates keyed by field name, a localised
`date:month` label and the group's `__range`; `formatted_read_group`, Odoo 19's public grouping, as JSON-2
answers it: `date:month` as [first day, label], aggregates keyed `field:agg`) and `res.users.context_get`.
`search_read` takes `offset`, `limit`, `order` and domains of plain conjunctions (`=`, `!=`, `<`, `>`, `<=`,
`>=`, `in`, `not in`); many2one fields answer [id, display name] and compare by id. Like Odoo, `create`
refuses an unbalanced entry ("The entry is not balanced.", a UserError in Odoo 17+), an unknown account
(MissingError) and a move created already posted; `action_post` refuses a posted move and numbers the move
`MISC/YYYY/MM/NNNN` when it posts it. Every change stamps the move's `write_date` (UTC, from `clock`).

Test helpers change the books as a person would, without HTTP: `edit_amount`, `cancel`, `reset_to_draft` (the
move keeps its number, and posting it again does not renumber it), `delete`, `add_manual_entry`, `duplicate`,
`set_date`. Read-back calls (`search_read`, `read`, `read_group`,
`formatted_read_group`) consume `read_faults`.

Faults, consumed by `account.move` `create` (either API): the base kinds; `post_fails_after_create` (the
create stores a draft and answers, the following `action_post` gets a 503 from the proxy in front of
Odoo); and Odoo exceptions rendered in each API's own shape (`ODOO_FAULTS`: JSON-2 status + body, or
JSON-RPC HTTP 200 + error object), all rolled back: nothing is stored.
"""
import calendar
import datetime
import json
import threading
import traceback
from decimal import Decimal
from urllib.parse import urlsplit

import requests

from tests.standins.base import Standin, StandinHandler, StandinServer

ACCOUNTS = {"1010": 11, "1200": 12, "2200": 22, "2300": 23, "4000": 40, "4900": 49, "6100": 61, "6200": 62}
JOURNALS = {1: "INV", 3: "MISC"}
DEFAULT_JOURNAL = 3
UID = 2
VERSION = {"server_version": "17.0", "server_version_info": [17, 0, 0, "final", 0, ""], "server_serie": "17.0",
           "protocol_version": 1}

# fault -> (exception name, message); rolled back by Odoo, rendered natively by each API.
ODOO_FAULTS = {
    "serialization_failure": ("psycopg2.errors.SerializationFailure",
                              "could not serialize access due to concurrent update"),
    "lock_error": ("odoo.exceptions.LockError", "Cannot grab a lock on records: account.move"),
    "access_error": ("odoo.exceptions.AccessError",
                     "You are not allowed to create 'Journal Entry' (account.move) records.\n\n"
                     "This operation is allowed for the following groups:\n\t- Accounting/Billing"),
    "server_error": ("builtins.KeyError", "'analytic_distribution'"),
}
READ_METHODS = {"search_read", "read", "read_group", "formatted_read_group"}
STATUS = {"UserError": 422, "ValidationError": 422, "RedirectWarning": 422, "AccessError": 403, "AccessDenied": 403,
          "MissingError": 404, "LockError": 409, "Unauthorized": 401, "NotFound": 404, "TooManyRequests": 429,
          "ServiceUnavailable": 503, "BadGateway": 502}


class OdooException(Exception):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def status(self) -> int:
        return STATUS.get(self.name.rsplit(".", 1)[-1], 500)


def serialized(name: str, message: str, arguments=None) -> dict:
    """`odoo.http.serialize_exception`: what both APIs put in an error (JSON-2 body / JSON-RPC data)."""
    return {"name": name, "message": message, "arguments": list(arguments or [message]), "context": {},
            "debug": "Traceback (most recent call last):\n  File \"/opt/odoo/odoo/http.py\", line 2212, in "
                     f"_transactioning\n{name}: {message}\n"}


def json2_error(status: int, message: str) -> dict:
    name = {401: "Unauthorized", 404: "NotFound", 429: "TooManyRequests", 500: "InternalServerError",
            502: "BadGateway", 503: "ServiceUnavailable"}.get(status, "HTTPException")
    return serialized(f"werkzeug.exceptions.{name}", message, [message, status])


class OdooStandin(Standin):
    def __init__(self, *, api_key="odoo-key", database="tieout", login="integration@tieout.test", accounts=None,
                 **kw):
        super().__init__(**kw)
        self.api_key = api_key
        self.database = database
        self.login = login
        self.accounts = dict(ACCOUNTS if accounts is None else accounts)  # code -> id
        self.moves: dict[int, dict] = {}
        self.calls: list[tuple[str, str, str]] = []  # (api, model, method), every authenticated ORM call
        self.fail_validation: str | None = None  # a UserError for every create while set
        self._next_id = 100
        self._next_line_id = 1000
        self.clock = lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self._numbers: dict[tuple, int] = {}
        self._fail_next_post = False
        self._state = threading.Lock()

    def start(self) -> "OdooStandin":
        # As the base, but polling for shutdown every 50 ms instead of 500: stopping is on every test's path.
        server = StandinServer(("127.0.0.1", 0), StandinHandler)
        server.daemon_threads = True
        server.app = self
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    # ------------------------------------------------------------------------------------------ helpers
    def count(self, method: str, model: str = "account.move") -> int:
        return sum(1 for _, m, name in self.calls if m == model and name == method)

    def by_ref(self, ref: str) -> list[dict]:
        return [m for m in self.moves.values() if m.get("ref") == ref]

    def add_move(self, *, ref, state: str = "draft", lines=None, date: str = "2026-11-01") -> int:
        """Seed a move as an earlier attempt (or a person) would have left it."""
        with self._state:
            self._next_id += 1
            move_id = self._next_id
            self.moves[move_id] = {"id": move_id, "name": "/", "state": state, "ref": ref, "move_type": "entry",
                                   "date": date, "journal_id": DEFAULT_JOURNAL,
                                   "line_ids": [self._line(line) for line in lines or []]}
            self._touch(self.moves[move_id])
            if state == "posted":
                self.moves[move_id]["name"] = self._number(self.moves[move_id])
        return move_id

    def _line(self, vals: dict) -> dict:
        self._next_line_id += 1
        return {**vals, "id": self._next_line_id}

    def _touch(self, move: dict) -> None:
        move["write_date"] = self.clock().strftime("%Y-%m-%d %H:%M:%S")
        move.setdefault("create_date", move["write_date"])

    # Changes a person makes in Odoo (reset to draft, edit, post again; cancel; delete), without HTTP.
    def edit_amount(self, move_id: int, delta) -> None:
        """`delta` added to the move's first debit line and first credit line: it stays balanced."""
        delta = Decimal(str(delta))
        with self._state:
            move = self.moves[move_id]
            for side in ("debit", "credit"):
                line = next(line for line in move["line_ids"] if Decimal(str(line.get(side) or 0)))
                line[side] = float(Decimal(str(line[side])) + delta)
            self._touch(move)

    def cancel(self, move_id: int) -> None:
        with self._state:
            self.moves[move_id]["state"] = "cancel"
            self._touch(self.moves[move_id])

    def reset_to_draft(self, move_id: int) -> None:
        """"Reset to Draft" (`button_draft`), as a person does to change a posted move: it keeps its number."""
        with self._state:
            self.moves[move_id]["state"] = "draft"
            self._touch(self.moves[move_id])

    def delete(self, move_id: int) -> None:
        with self._state:
            del self.moves[move_id]

    def set_date(self, move_id: int, date: str) -> None:
        with self._state:
            self.moves[move_id]["date"] = date
            self._touch(self.moves[move_id])

    def add_manual_entry(self, *, account: str, amount, against: str, date: str = "2026-11-01", ref=False,
                         state: str = "posted") -> int:
        """A miscellaneous entry a person posted: `amount` debited to `account`, credited to `against` (our
        stand-in's account codes), without our reference unless `ref` says otherwise."""
        amount = float(Decimal(str(amount)))
        return self.add_move(ref=ref, state=state, date=date, lines=[
            {"account_id": self.accounts[account], "name": "Booked by hand", "debit": amount, "credit": 0.0},
            {"account_id": self.accounts[against], "name": "Booked by hand", "debit": 0.0, "credit": amount}])

    def duplicate(self, move_id: int) -> int:
        """A second posted move copying `move_id`, its `ref` too (typed in again by a person)."""
        source = self.moves[move_id]
        lines = [{k: v for k, v in line.items() if k != "id"} for line in source["line_ids"]]
        return self.add_move(ref=source["ref"], state="posted", date=source["date"], lines=lines)

    def _number(self, move: dict) -> str:
        year, month = move["date"][:4], move["date"][5:7]
        key = (move["journal_id"], year, month)
        self._numbers[key] = self._numbers.get(key, 0) + 1
        return f"{JOURNALS[move['journal_id']]}/{year}/{month}/{self._numbers[key]:04d}"

    # ------------------------------------------------------------------------------------------ routing
    def handle(self, handler: StandinHandler, method: str) -> None:
        path = urlsplit(handler.path).path
        try:
            body = handler.body_json()
        except ValueError:
            body = None
        # The base's faults read the body again: it has been read, hand them the parsed one, for this
        # request only (a kept-alive connection reuses the handler for the next request).
        handler.body_json = lambda: body
        try:
            if method == "POST" and path == "/jsonrpc":
                self.handle_jsonrpc(handler, body)
            elif method == "POST" and path.startswith("/json/2/") and path.count("/") == 4:
                _, _, _, model, name = path.split("/")
                self.handle_json2(handler, model, name, body)
            else:
                handler.send_json(404, json2_error(404, "Did you mean POST /json/2/<model>/<method>?"))
        finally:
            del handler.body_json

    def handle_json2(self, handler: StandinHandler, model: str, method: str, body) -> None:
        if handler.headers.get("X-Odoo-Database") != self.database:
            # A multi-database server cannot pick a database: werkzeug's NotFound, as HTML.
            page = b"<!doctype html><title>404 Not Found</title><h1>Not Found</h1>" \
                   b"<p>The requested URL was not found on the server.</p>"
            handler.send_response(404)
            handler.send_header("Content-Type", "text/html; charset=utf-8")
            handler.send_header("Content-Length", str(len(page)))
            handler.end_headers()
            handler.wfile.write(page)
            return
        scheme, _, key = (handler.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or key != self.api_key:
            handler.send_json(401, json2_error(401, "Invalid apikey"))
            return
        if not isinstance(body, dict):
            handler.send_json(400, "could not parse the body, expecting a json object")
            return
        params = dict(body)
        ids = params.pop("ids", [])
        params.pop("context", None)
        self.call(handler, "json2", model, method, ids, params, self.render_json2)

    def render_json2(self, handler: StandinHandler, result=None, error: OdooException | None = None) -> None:
        if error is not None:
            handler.send_json(error.status, serialized(error.name, error.message))
        else:
            handler.send_json(200, result)

    def handle_jsonrpc(self, handler: StandinHandler, body) -> None:
        request_id = body.get("id") if isinstance(body, dict) else None
        params = body.get("params") if isinstance(body, dict) else None

        def render(handler, result=None, error: OdooException | None = None):
            answer = {"jsonrpc": "2.0", "id": request_id}
            if error is not None:
                answer["error"] = {"code": 200, "message": "Odoo Server Error",
                                   "data": serialized(error.name, error.message)}
            else:
                answer["result"] = result
            handler.send_json(200, answer)  # always 200: the error is in the body

        if not isinstance(params, dict):
            handler.send_json(400, None)
            return
        service, method, args = params.get("service"), params.get("method"), params.get("args") or []
        if service == "common" and method == "version":
            render(handler, VERSION)
            return
        if service == "common" and method in ("login", "authenticate"):
            db, login, password = (list(args) + [None] * 3)[:3]
            if db != self.database:
                render(handler, error=self.missing_database(db))
                return
            render(handler, UID if (login == self.login and password == self.api_key) else False)
            return
        if service == "object" and method == "execute_kw" and len(args) >= 6:
            db, uid, password, model, name, call_args = args[:6]
            kwargs = dict(args[6]) if len(args) > 6 and args[6] else {}
            kwargs.pop("context", None)
            if db != self.database:
                render(handler, error=self.missing_database(db))
                return
            if uid != UID or password != self.api_key:
                render(handler, error=OdooException("odoo.exceptions.AccessDenied", "Access Denied"))
                return
            if name in ("action_post", "read", "button_cancel"):
                ids, call_args = (call_args[0] if call_args else []), call_args[1:]
            else:
                ids = []
            positional = {"search_read": ["domain", "fields", "offset", "limit", "order"], "read": ["fields"],
                          "create": ["vals_list"], "read_group": ["domain", "fields", "groupby", "offset", "limit",
                                                                  "orderby", "lazy"]}
            kwargs.update(dict(zip(positional.get(name, []), call_args)))
            self.call(handler, "jsonrpc", model, name, ids, kwargs, render)
            return
        render(handler, error=OdooException("builtins.NameError", f"Method not available {method}"))

    @staticmethod
    def missing_database(db) -> OdooException:
        return OdooException("psycopg2.OperationalError",
                             f'connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: '
                             f'FATAL:  database "{db}" does not exist\n')

    # ------------------------------------------------------------------------------------------ the ORM
    def call(self, handler, api: str, model: str, method: str, ids, params: dict, render) -> None:
        self.calls.append((api, model, method))
        if (model, method) == ("account.move", "create"):
            fault = self.faults.take()
        else:
            fault = self.read_faults.take() if method in READ_METHODS else None
        if fault == "post_fails_after_create":
            self._fail_next_post = True
            fault = None
        if (model, method) == ("account.move", "action_post") and self._fail_next_post:
            self._fail_next_post = False
            handler.send_json(503, json2_error(503, "Service Unavailable"))
            return
        if self.pre_fault(handler, fault, json2_error):
            return
        if fault in ODOO_FAULTS:
            render(handler, error=OdooException(*ODOO_FAULTS[fault]))
            return
        try:
            with self._state:
                result = self.run(model, method, ids, params)
        except OdooException as exc:
            render(handler, error=exc)
            return
        except Exception as exc:  # a bug in the stand-in shows as Odoo's generic server error
            render(handler, error=OdooException(f"builtins.{type(exc).__name__}", traceback.format_exc()))
            return
        if self.post_fault(handler, fault, json2_error):
            return
        if api == "jsonrpc" and method == "create" and isinstance(params.get("vals_list"), dict):
            result = result[0]  # execute_kw create with one dict answers one id
        render(handler, result)

    def run(self, model: str, method: str, ids, params: dict):
        if (model, method) == ("res.users", "context_get"):
            return {"lang": "en_US", "tz": "UTC", "uid": UID}
        if model == "account.account" and method in ("search_read", "read"):
            rows = [{"id": account_id, "code": code, "name": f"Account {code}"}
                    for code, account_id in self.accounts.items()]
            if method == "read":
                known = {row["id"]: row for row in rows}
                missing = [i for i in ids if i not in known]
                if missing:
                    raise self.missing("account.account", missing[0])
                return self.select([known[i] for i in ids], [], params.get("fields"))
            return self.select(rows, params.get("domain") or [], params.get("fields"))
        if model == "account.move.line":
            return self.run_lines(method, params)
        if model != "account.move":
            raise OdooException("werkzeug.exceptions.NotFound", f"the model {model!r} does not exist")
        if method == "create":
            vals_list = params.get("vals_list")
            vals_list = [vals_list] if isinstance(vals_list, dict) else (vals_list or [])
            return [self.create_move(vals) for vals in vals_list]
        if method == "search_read":
            return self.select(list(self.moves.values()), params.get("domain") or [], params.get("fields"),
                               offset=params.get("offset") or 0, limit=params.get("limit"),
                               order=params.get("order"))
        if method == "read":
            rows = []
            for move_id in ids:
                if move_id not in self.moves:
                    raise self.missing("account.move", move_id)
                rows.append(self.moves[move_id])
            return self.select(rows, [], params.get("fields"))
        if method == "action_post":
            for move_id in ids:
                move = self.moves.get(move_id)
                if move is None:
                    raise self.missing("account.move", move_id)
                if move["state"] == "posted":
                    raise OdooException("odoo.exceptions.UserError",
                                        f"The entry {move['name']} (id {move_id}) is already posted.")
                if move["state"] == "cancel":
                    raise OdooException("odoo.exceptions.UserError", "You can't post a cancelled entry.")
            for move_id in ids:
                move = self.moves[move_id]
                move["state"] = "posted"
                if move["name"] in ("/", False, ""):  # a move reset to draft keeps the number it had
                    move["name"] = self._number(move)
                self._touch(move)
            return False
        if method == "button_cancel":
            for move_id in ids:
                self.moves[move_id]["state"] = "cancel"
                self._touch(self.moves[move_id])
            return False
        raise OdooException("werkzeug.exceptions.NotFound", f"The method '{method}' does not exist on "
                                                            f"the model '{model}'")

    @staticmethod
    def missing(model: str, record_id) -> OdooException:
        return OdooException("odoo.exceptions.MissingError", "Record does not exist or has been deleted.\n"
                                                             f"(Record: {model}({record_id},), User: {UID})")

    def create_move(self, vals: dict) -> int:
        if self.fail_validation:
            raise OdooException("odoo.exceptions.UserError", self.fail_validation)
        if vals.get("state") == "posted":
            raise OdooException("odoo.exceptions.UserError", "You cannot create a move already in the posted "
                                                             "state. Please create a draft move and post it after.")
        journal_id = vals.get("journal_id", DEFAULT_JOURNAL)
        if journal_id not in JOURNALS:
            raise self.missing("account.journal", journal_id)
        lines = []
        for command in vals.get("line_ids") or []:
            if not (isinstance(command, list) and len(command) == 3 and command[0] == 0):
                raise OdooException("builtins.ValueError", f"Wrong value for account.move.line_ids: {command!r}")
            line = dict(command[2])
            if line.get("account_id") not in self.accounts.values():
                raise self.missing("account.account", line.get("account_id"))
            lines.append(line)
        # Odoo rounds every line to the currency (two places here), then checks the sum per move.
        debit = sum(Decimal(str(line.get("debit", 0))).quantize(Decimal("0.01")) for line in lines)
        credit = sum(Decimal(str(line.get("credit", 0))).quantize(Decimal("0.01")) for line in lines)
        if not lines or debit != credit:
            raise OdooException("odoo.exceptions.UserError", "The entry is not balanced.")
        self._next_id += 1
        move = {"id": self._next_id, "name": "/", "state": "draft", "move_type": vals.get("move_type", "entry"),
                "ref": vals.get("ref") or False, "date": vals.get("date") or "2026-11-01", "journal_id": journal_id,
                "line_ids": [self._line(line) for line in lines]}
        self._touch(move)
        self.moves[move["id"]] = move
        return move["id"]

    @staticmethod
    def select(rows: list[dict], domain: list, fields, *, offset: int = 0, limit=None, order=None) -> list[dict]:
        for leaf in domain:
            if not (isinstance(leaf, list) and len(leaf) == 3):
                continue  # '&' / '|' operators: the connector sends plain conjunctions only
            field, op, value = leaf
            test = _OPERATORS.get(op)
            if test is None:
                raise OdooException("builtins.ValueError", f"Invalid leaf {leaf!r}")
            rows = [r for r in rows if test(_plain(r.get(field, False)), value)]
        for part in reversed([p.split() for p in (order or "id asc").split(",") if p.strip()]):
            rows = sorted(rows, key=lambda r, f=part[0]: _sort_key(_plain(r.get(f))),
                          reverse=len(part) > 1 and part[1].lower() == "desc")
        rows = rows[offset:offset + limit if limit else None]
        if not fields:
            return [_out(r) for r in rows]
        return [{"id": r["id"], **{f: _out_value(f, r.get(f, False)) for f in fields}} for r in rows]

    # ---------------------------------------------------------------------------------- account.move.line
    def lines(self) -> list[dict]:
        """Every move's lines as `account.move.line` records (the related fields Odoo stores on them)."""
        codes = {account_id: code for code, account_id in self.accounts.items()}
        out = []
        for move in self.moves.values():
            for line in move["line_ids"]:
                account_id = line.get("account_id")
                out.append({"id": line["id"], "move_id": [move["id"], move["name"]],
                            "account_id": [account_id, f"{codes.get(account_id, account_id)} Account"],
                            "name": line.get("name", ""), "debit": float(line.get("debit") or 0),
                            "credit": float(line.get("credit") or 0), "date": move["date"],
                            "parent_state": move["state"], "ref": move["ref"], "company_id": [1, "Tieout US"]})
        return out

    def run_lines(self, method: str, params: dict):
        if method == "search_read":
            return self.select(self.lines(), params.get("domain") or [], params.get("fields"),
                               offset=params.get("offset") or 0, limit=params.get("limit"), order=params.get("order"))
        if method == "read_group":  # Odoo 17: read_group(domain, fields, groupby, offset, limit, orderby, lazy)
            groupby = params.get("groupby") or []
            groupby = [groupby] if isinstance(groupby, str) else list(groupby)
            if params.get("lazy", True):
                groupby = groupby[:1]
            aggregates = [spec for spec in params.get("fields") or [] if ":" in spec]
            out = []
            for key, rows in self.groups(params.get("domain") or [], groupby):
                group = {"__count": len(rows), "__domain": params.get("domain") or []}
                for spec, value in zip(groupby, key, strict=True):
                    if spec.endswith(":month"):
                        group[spec] = _month_label(value)
                        group.setdefault("__range", {})[spec] = {"from": f"{value}-01", "to": _next_month(value)}
                    else:
                        group[spec] = value
                for spec in aggregates:
                    field = spec.split(":")[0]
                    group[field] = float(sum(Decimal(str(r[field])) for r in rows))
                out.append(group)
            return out
        if method == "formatted_read_group":  # Odoo 19: (domain, groupby, aggregates, having, offset, limit, order)
            groupby = list(params.get("groupby") or [])
            out = []
            for key, rows in self.groups(params.get("domain") or [], groupby):
                group = {"__extra_domain": []}
                for spec, value in zip(groupby, key, strict=True):
                    group[spec] = [f"{value}-01", _month_label(value)] if spec.endswith(":month") else value
                for spec in params.get("aggregates") or []:
                    if spec == "__count":
                        group[spec] = len(rows)
                    else:
                        field, agg = spec.split(":")
                        if agg != "sum":
                            raise OdooException("builtins.ValueError", f"Invalid aggregate {spec!r} here")
                        group[spec] = float(sum(Decimal(str(r[field])) for r in rows))
                out.append(group)
            return out
        raise OdooException("werkzeug.exceptions.NotFound", f"The method '{method}' does not exist on the model "
                                                            "'account.move.line'")

    def groups(self, domain: list, groupby: list) -> list[tuple[tuple, list[dict]]]:
        """Lines matching `domain`, grouped by `groupby` (many2one fields, or `date:month`), in key order."""
        grouped: dict[tuple, list[dict]] = {}
        for row in self.select(self.lines(), domain, None):
            key = []
            for spec in groupby:
                field, _, granularity = spec.partition(":")
                if granularity and granularity != "month":
                    raise OdooException("builtins.ValueError", f"Invalid groupby {spec!r} here")
                key.append(row[field][:7] if granularity else row[field])
            grouped.setdefault(tuple(_key(k) for k in key), []).append(row)
        return [(tuple(_unkey(k) for k in key), rows) for key, rows in sorted(grouped.items())]

    def balanced(self, move_id: int) -> bool:
        lines = self.moves[move_id]["line_ids"]
        return sum(Decimal(str(line["debit"])) for line in lines) == sum(Decimal(str(line["credit"])) for line in lines)


_OPERATORS = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a is not False and a < b,
    ">": lambda a, b: a is not False and a > b, "<=": lambda a, b: a is not False and a <= b,
    ">=": lambda a, b: a is not False and a >= b, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
}


def _plain(value):
    """A many2one's id ([id, name] as read answers it); anything else as it is."""
    return value[0] if isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) else value


def _sort_key(value):
    return (value is None or value is False, value if value not in (None, False) else 0)


def _out_value(field: str, value):
    if field == "line_ids":
        return [line["id"] for line in value]
    return value


def _out(row: dict) -> dict:
    return {k: _out_value(k, v) for k, v in row.items()}


def _key(value):
    return tuple(value) if isinstance(value, list) else value


def _unkey(value):
    return list(value) if isinstance(value, tuple) else value


def _month_label(month: str) -> str:
    return f"{calendar.month_name[int(month[5:7])]} {month[:4]}"


def _next_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year + number // 12}-{number % 12 + 1:02d}-01"


def raw_json2(url: str, model: str, method: str, body: dict, *, key="odoo-key", database="tieout"):
    """Call the stand-in directly (to check the stand-in itself follows Odoo)."""
    return requests.post(f"{url}/json/2/{model}/{method}", data=json.dumps(body), timeout=5,
                         headers={"Authorization": f"bearer {key}", "X-Odoo-Database": database,
                                  "Content-Type": "application/json"})
