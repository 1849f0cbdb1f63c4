"""A NetSuite (SuiteTalk REST web services) stand-in: the OAuth 2.0 client-credentials token endpoint,
bearer and token-based (OAuth 1.0a, HMAC-SHA256) authentication, journalEntry upsert and read by external
id, subsidiary read, and NetSuite's error bodies (`o:errorDetails` with `o:errorCode`/`o:errorPath`).

What it checks, as NetSuite does:
- token endpoint: form-encoded `grant_type=client_credentials`, `client_assertion_type` jwt-bearer, and a
  JWT assertion whose signature verifies with the mapped certificate's public key, header `kid` = the
  certificate id, `iss` = the client id, `aud` = the token endpoint, `scope` containing `rest_webservices`,
  `exp - iat` at most an hour; it answers `{"access_token", "expires_in", "token_type": "bearer"}`, or OAuth's
  `{"error", "error_description"}`.
- record calls: a live bearer token (401 INVALID_LOGIN otherwise, with `WWW-Authenticate`), or in TBA mode an
  `Authorization: OAuth realm=...` header whose HMAC-SHA256 signature oauthlib verifies over method, URL and
  query, with a fresh nonce and a timestamp within five minutes.
- `PUT .../journalEntry/eid:<x>` creates or updates the one record with that external id (204 + Location);
  on update the `line` sublist is appended to unless `?replace=line` — NetSuite's rule for non-keyed
  sublists, which a careless re-send would trip over. Unbalanced lines → 400 USER_ERROR; an unknown account
  or subsidiary → 400 INVALID_KEY_OR_REF with `o:errorPath`.

- SuiteQL, `POST /services/rest/query/v1/suiteql?limit=&offset=` with `Prefer: transient` (400 without it)
  and `{"q": ...}`: the query runs on an SQLite copy of the books (`transaction`, `transactionline`,
  `transactionaccountingline`) with SuiteQL's Oracle functions our queries use (`TO_CHAR`, `TO_DATE`,
  `TO_TIMESTAMP`); the answer is NetSuite's page: `links` (self, next), `count`, `hasMore`, `items` (each
  with `links`, values as strings, SQL nulls left out), `offset`, `totalResults`; `limit` 1..1000; at most
  100,000 results per query. A query SQLite cannot run is 400 INVALID_PARAMETER.

The books: every upserted record is a posting journal entry (`posting` T, `voided` F, `lastModifiedDate`
stamped from `clock`, UTC) whose lines are accounting lines in book 1 of the record's subsidiary. Test helpers
change them as a person would, without HTTP: `edit_amount`, `void` (amounts to zero, `voided` T, as NetSuite
voids without reversing journals; an upsert into a voided record is refused, 400 USER_ERROR), `delete`, `add_manual_entry` (no external id), `duplicate` ("Make Copy":
same memo and lines, no external id), `set_date`.

Faults, besides the base's: `concurrency_limit` (429 CONCURRENCY_LIMIT_EXCEEDED + Retry-After) and
`concurrency_limit_400` (400 SSS_REQUEST_LIMIT_EXCEEDED, how RESTlets report the same governance limit).
`faults` apply to the upsert only; `read_faults` to SuiteQL queries.
"""
import datetime
import re
import secrets
import sqlite3
import threading
import time
from decimal import Decimal
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from oauthlib.oauth1.rfc5849 import signature as oauth_signature
from oauthlib.oauth1.rfc5849 import utils as oauth_utils

from tests.standins.base import Standin, StandinHandler

RECORD_PATH = "/services/rest/record/v1/journalEntry"
SUITEQL_PATH = "/services/rest/query/v1/suiteql"
SUITEQL_MAX_RESULTS = 100_000
SUBSIDIARY_PATH = "/services/rest/record/v1/subsidiary"
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ["PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_-]+$")
INVALID_LOGIN = ("Invalid login attempt. For more details, see the Login Audit Trail in the NetSuite UI at "
                 "Setup > Users/Roles > User Management > View Login Audit Trail.")

_TYPES = {400: "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1",
          401: "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.2",
          404: "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.5",
          429: "https://www.rfc-editor.org/rfc/rfc6585.html#section-4",
          500: "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.1",
          502: "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.3",
          503: "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.4"}
_TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_CODES = {400: "USER_ERROR", 401: "INVALID_LOGIN", 404: "NONEXISTENT_ID", 429: "CONCURRENCY_LIMIT_EXCEEDED"}


def ns_error(status: int, detail: str, code: str | None = None, path: str | None = None) -> dict:
    item = {"detail": detail, "o:errorCode": code or _CODES.get(status, "UNEXPECTED_ERROR")}
    if path:
        item["o:errorPath"] = path
    return {"type": _TYPES.get(status, "about:blank"), "title": _TITLES.get(status, "Error"), "status": status,
            "o:errorDetails": [item]}


class NetSuiteStandin(Standin):
    def __init__(self, *, auth="oauth2", account_id="1234567_SB1", client_id="ns-client-id",
                 certificate_id="ns-cert-1", public_key=None, consumer_key="ns-consumer-key",
                 consumer_secret="ns-consumer-secret", token_id="ns-token-id", token_secret="ns-token-secret",
                 accounts=None, subsidiaries=None, token_ttl=3600, retry_after="1", **kw):
        super().__init__(**kw)
        self.auth = auth
        self.realm = account_id.upper().replace("-", "_")
        self.client_id = client_id
        self.certificate_id = certificate_id
        self.public_key = load_pem_public_key(public_key) if isinstance(public_key, bytes) else public_key
        self.consumer_key, self.consumer_secret = consumer_key, consumer_secret
        self.token_id, self.token_secret = token_id, token_secret
        self.accounts = set(accounts or ["1010", "1200", "2200", "2300", "4000", "4900", "6100", "6200"])
        self.subsidiaries = dict(subsidiaries or {"1": "Tieout US"})
        self.token_ttl = token_ttl
        self.retry_after = retry_after
        self.records: dict[str, dict] = {}  # external id → journalEntry
        self.others: list[dict] = []  # journal entries without an external id (made by people, copies)
        self.queries: list[str] = []  # every SuiteQL query received
        self.clock = lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.tokens: dict[str, float] = {}  # access token → expiry (wall clock)
        self.token_requests = 0
        self.authorizations: list[str] = []  # the Authorization header of every record call
        self.auth_failures: list[str] = []  # why a record call was refused (for a failing test to show)
        self.creates = 0
        self.updates = 0
        self.fail_validation: str | None = None  # a permanent 400 USER_ERROR for every upsert while set
        self.reject_tokens = False  # every bearer token refused (a revoked integration)
        self._nonces: set[tuple[str, str]] = set()
        self._seq = 0
        self._state = threading.Lock()

    @property
    def token_url(self) -> str:
        return f"{self.url}{TOKEN_PATH}"

    def revoke_tokens(self) -> None:
        with self._state:
            self.tokens.clear()

    # ------------------------------------------------------------------------------------------ routing
    def handle(self, handler: StandinHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        if path == TOKEN_PATH and method == "POST":
            self.token_endpoint(handler)
            return
        problem = self.authenticate(handler, method)
        if problem:
            with self._state:
                self.auth_failures.append(problem)
            _read(handler)
            headers = {}
            if self.auth == "oauth2":
                headers["WWW-Authenticate"] = (f'Bearer realm="{self.realm}", error="invalid_token", '
                                               f'error_description="Invalid login attempt."')
            handler.send_json(401, ns_error(401, INVALID_LOGIN), headers)
            return
        if method == "GET" and path.startswith(SUBSIDIARY_PATH + "/"):
            key = path[len(SUBSIDIARY_PATH) + 1:]
            if key in self.subsidiaries:
                handler.send_json(200, {"id": key, "name": self.subsidiaries[key]})
            else:
                handler.send_json(404, ns_error(404, "The record instance does not exist. Provide a valid record "
                                                     "instance ID."))
            return
        if method == "POST" and path == SUITEQL_PATH:
            self.suiteql(handler, parse_qs(parts.query))
            return
        if path.startswith(RECORD_PATH + "/"):
            ref = path[len(RECORD_PATH) + 1:]
            if method == "PUT":
                self.upsert(handler, ref, parse_qs(parts.query))
                return
            if method == "GET":
                self.read(handler, ref)
                return
        _read(handler)
        handler.send_json(404, ns_error(404, f"Record type or URL {path} is not valid.", "INVALID_URL"))

    # ------------------------------------------------------------------------------------------ auth
    def token_endpoint(self, handler: StandinHandler) -> None:
        with self._state:
            self.token_requests += 1
        form = {k: v[0] for k, v in parse_qs(_read(handler).decode()).items()}
        if "application/x-www-form-urlencoded" not in (handler.headers.get("Content-Type") or "") or \
                form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != JWT_BEARER \
                or not form.get("client_assertion"):
            handler.send_json(400, {"error": "invalid_request"})
            return
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("kid") != self.certificate_id:
                raise jwt.InvalidTokenError(f"unknown certificate id {header.get('kid')!r}")
            if header.get("alg") not in ALGORITHMS:
                raise jwt.InvalidTokenError(f"algorithm {header.get('alg')!r} is not accepted")
            claims = jwt.decode(assertion, self.public_key, algorithms=[header["alg"]], audience=self.token_url,
                                issuer=self.client_id, options={"require": ["exp", "iat", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            handler.send_json(401, {"error": "invalid_client", "error_description": str(exc)},
                              {"WWW-Authenticate": f'Basic realm="{self.realm}"'})
            return
        scopes = claims.get("scope") or ""
        scopes = scopes if isinstance(scopes, list) else [s.strip() for s in str(scopes).split(",")]
        if claims["exp"] - claims["iat"] > 3600 or "rest_webservices" not in scopes:
            handler.send_json(400, {"error": "invalid_request",
                                    "error_description": "scope must include rest_webservices; exp - iat ≤ 1 h"})
            return
        token = secrets.token_urlsafe(32)
        with self._state:
            self.tokens[token] = time.time() + self.token_ttl
        handler.send_json(200, {"access_token": token, "expires_in": self.token_ttl, "token_type": "bearer"})

    def authenticate(self, handler: StandinHandler, method: str) -> str | None:
        """None when the request is authenticated, else why not."""
        header = handler.headers.get("Authorization") or ""
        with self._state:
            self.authorizations.append(header)
        if self.auth == "oauth2":
            if not header.startswith("Bearer "):
                return "no bearer token"
            with self._state:
                expiry = self.tokens.get(header[len("Bearer "):])
            if self.reject_tokens or expiry is None or expiry < time.time():
                return "unknown or expired token"
            return None
        if not header.startswith("OAuth "):
            return "no OAuth header"
        try:  # the header's values are percent-encoded (RFC 5849 §3.5.1)
            params = {k: oauth_utils.unescape(v) for k, v in oauth_utils.parse_authorization_header(header)}
        except ValueError:
            return "malformed OAuth header"
        if params.get("realm") != self.realm or params.get("oauth_consumer_key") != self.consumer_key or \
                params.get("oauth_token") != self.token_id or params.get("oauth_signature_method") != "HMAC-SHA256":
            return "wrong realm, consumer key, token or signature method"
        try:
            if abs(int(params.get("oauth_timestamp", "0")) - time.time()) > 300:
                return "stale timestamp"
        except ValueError:
            return "bad timestamp"
        with self._state:
            nonce = (params.get("oauth_nonce", ""), params.get("oauth_timestamp", ""))
            if not nonce[0] or nonce in self._nonces:
                return "nonce missing or used before"
            self._nonces.add(nonce)
        query = urlsplit(handler.path).query
        request = SimpleNamespace(
            uri=f"http://{handler.headers.get('Host')}{handler.path}", http_method=method,
            params=oauth_signature.collect_parameters(uri_query=query, headers={"Authorization": header}),
            signature=params.get("oauth_signature", ""))
        if not oauth_signature.verify_hmac_sha256(request, self.consumer_secret, self.token_secret):
            return "signature mismatch"
        return None

    # ------------------------------------------------------------------------------------------ records
    def upsert(self, handler: StandinHandler, ref: str, query: dict) -> None:
        if not ref.startswith("eid:") or not EXTERNAL_ID.match(ref[4:]):
            _read(handler)
            handler.send_json(400, ns_error(400, "Upsert needs an external id (eid:<letters, digits, _ or ->).",
                                            "INVALID_ID"))
            return
        external_id = ref[4:]
        fault = self.faults.take()
        if fault == "concurrency_limit":
            _read(handler)
            handler.send_json(429, ns_error(429, "Concurrent request limit exceeded. Request blocked."),
                              {"Retry-After": self.retry_after})
            return
        if fault == "concurrency_limit_400":
            _read(handler)
            handler.send_json(400, ns_error(400, "Concurrent request limit exceeded. Request blocked.",
                                            "SSS_REQUEST_LIMIT_EXCEEDED"))
            return
        if self.pre_fault(handler, fault, ns_error):
            return
        doc = handler.body_json() or {}
        problem = self.validate(doc)
        if problem:
            handler.send_json(400, ns_error(400, *problem))
            return
        lines = [dict(item) for item in doc["line"]["items"]]
        replace = "line" in ",".join(query.get("replace", [])).split(",")
        with self._state:
            record = self.records.get(external_id)
            if record is not None and record.get("voided"):
                # "After you void a transaction, you cannot make changes to the transaction that impact the
                # general ledger" (NetSuite's help on voiding).
                handler.send_json(400, ns_error(400, f"Transaction {record['tranId']} is voided: you cannot make "
                                                     "changes that impact the general ledger.", "USER_ERROR"))
                return
            if record is None:
                self._seq += 1
                record = {"id": str(1000 + self._seq), "tranId": f"JE{self._seq:05d}", "externalId": external_id,
                          "line": {"items": []}}
                self.records[external_id] = record
                self.creates += 1
            else:
                self.updates += 1
            for field in ("tranDate", "subsidiary", "memo", "currency"):
                if field in doc:
                    record[field] = doc[field]
            record.setdefault("voided", False)
            record.setdefault("posting", True)
            record["lastModifiedDate"] = self.now()
            # NetSuite's rule for a non-keyed sublist on update: append, unless asked to replace.
            record["line"]["items"] = lines if replace else record["line"]["items"] + lines
            record_id = record["id"]
        if self.post_fault(handler, fault, ns_error):
            return
        handler.send_json(204, None, {"Location": f"{self.url}{RECORD_PATH}/{record_id}"})

    def read(self, handler: StandinHandler, ref: str) -> None:
        with self._state:
            if ref.startswith("eid:"):
                record = self.records.get(ref[4:])
            else:
                record = next((r for r in self.records.values() if r["id"] == ref), None)
            record = _copy(record) if record else None
        if record is None:
            handler.send_json(404, ns_error(404, "The record instance does not exist. Provide a valid record "
                                                 "instance ID."))
            return
        record["links"] = [{"rel": "self", "href": f"{self.url}{RECORD_PATH}/{record['id']}"}]
        handler.send_json(200, record)

    def validate(self, doc: dict) -> tuple | None:
        """(detail, code, path) of the first problem, as NetSuite reports it, or None."""
        if self.fail_validation:
            return self.fail_validation, "USER_ERROR"
        subsidiary = (doc.get("subsidiary") or {}).get("id")
        if subsidiary not in self.subsidiaries:
            return f"Invalid subsidiary reference key {subsidiary}.", "INVALID_KEY_OR_REF", "subsidiary"
        if not doc.get("tranDate"):
            return "Please enter value(s) for: Date", "USER_ERROR", "tranDate"
        items = ((doc.get("line") or {}).get("items")) or []
        if not items:
            return "You must enter at least one line item for this transaction.", "USER_ERROR", "line"
        for number, item in enumerate(items):
            account = (item.get("account") or {}).get("id")
            if account not in self.accounts:
                return (f"Invalid account reference key {account}.", "INVALID_KEY_OR_REF",
                        f"line.items[{number}].account")
        debit = sum(Decimal(str(item.get("debit", 0))) for item in items)
        credit = sum(Decimal(str(item.get("credit", 0))) for item in items)
        if debit != credit:
            return (f"The transaction is out of balance: debits {debit} and credits {credit} must be equal.",
                    "USER_ERROR", "line")
        return None


    # ------------------------------------------------------------------------------------------ SuiteQL
    def now(self) -> str:
        return self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def transactions(self) -> list[dict]:
        return sorted([*self.records.values(), *self.others], key=lambda r: int(r["id"]))

    def suiteql(self, handler: StandinHandler, query: dict) -> None:
        if self.pre_read_fault(handler, ns_error):
            return
        body = handler.body_json() or {}
        self.queries.append(str(body.get("q") or ""))
        if (handler.headers.get("Prefer") or "").strip().lower() != "transient":
            handler.send_json(400, ns_error(400, "The request header Prefer must be set to transient.",
                                            "INVALID_HEADER"))
            return
        try:
            limit = int(query.get("limit", ["1000"])[0])
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            limit = offset = -1
        if not 1 <= limit <= 1000 or offset < 0 or offset >= SUITEQL_MAX_RESULTS:
            handler.send_json(400, ns_error(400, "Invalid limit or offset: limit is 1 to 1000, and a query returns "
                                                 f"at most {SUITEQL_MAX_RESULTS} results.", "INVALID_PARAMETER"))
            return
        try:
            with self._state:
                columns, rows = _run_suiteql(self.transactions(), str(body.get("q") or ""))
        except sqlite3.Error as exc:
            handler.send_json(400, ns_error(400, f"Invalid search query. Detailed unprocessed description "
                                                 f"follows. {exc}.", "INVALID_PARAMETER"))
            return
        rows = rows[:SUITEQL_MAX_RESULTS]
        page = rows[offset:offset + limit]
        base = f"{self.url}{SUITEQL_PATH}"
        links = [{"rel": "self", "href": f"{base}?limit={limit}&offset={offset}"}]
        has_more = offset + limit < len(rows)
        if has_more:
            links.insert(0, {"rel": "next", "href": f"{base}?limit={limit}&offset={offset + limit}"})
        items = [{"links": [], **{name: _text(value) for name, value in zip(columns, row, strict=True)
                                  if value is not None}} for row in page]
        handler.send_json(200, {"links": links, "count": len(items), "hasMore": has_more, "items": items,
                                "offset": offset, "totalResults": len(rows)})

    # ------------------------------------------------------------------------------------------ the books
    def find(self, ref: str) -> dict:
        """A journal entry by external id, tranId or internal id."""
        record = self.records.get(ref) or next((r for r in self.transactions() if ref in (r["id"], r["tranId"])),
                                               None)
        if record is None:
            raise KeyError(ref)
        return record

    def _new_record(self, *, memo: str, tran_date: str, items: list, subsidiary: str = "1") -> dict:
        with self._state:
            self._seq += 1
            record = {"id": str(1000 + self._seq), "tranId": f"JE{self._seq:05d}", "tranDate": tran_date,
                      "subsidiary": {"id": subsidiary}, "memo": memo, "line": {"items": items}, "voided": False,
                      "posting": True, "lastModifiedDate": self.now()}
            self.others.append(record)
        return record

    def edit_amount(self, ref: str, delta) -> None:
        """`delta` added to the first debit line and the first credit line: it stays balanced."""
        delta = Decimal(str(delta))
        with self._state:
            record = self.find(ref)
            for side in ("debit", "credit"):
                item = next(i for i in record["line"]["items"] if i.get(side))
                item[side] = float(Decimal(str(item[side])) + delta)
            record["lastModifiedDate"] = self.now()

    def void(self, ref: str) -> None:
        """Void without a reversing journal: NetSuite sets the amounts to zero and marks it voided."""
        with self._state:
            record = self.find(ref)
            for item in record["line"]["items"]:
                for side in ("debit", "credit"):
                    if side in item:
                        item[side] = 0.0
            record["voided"] = True
            record["lastModifiedDate"] = self.now()

    def delete(self, ref: str) -> None:
        with self._state:
            record = self.find(ref)
            if record.get("externalId"):
                del self.records[record["externalId"]]
            else:
                self.others.remove(record)

    def set_date(self, ref: str, tran_date: str) -> None:
        with self._state:
            record = self.find(ref)
            record["tranDate"] = tran_date
            record["lastModifiedDate"] = self.now()

    def add_manual_entry(self, *, account: str, amount, against: str, tran_date: str = "2026-11-01",
                         memo: str = "Booked by hand", subsidiary: str = "1") -> dict:
        """A journal entry a person entered: `amount` debited to `account`, credited to `against`."""
        amount = float(Decimal(str(amount)))
        return self._new_record(memo=memo, tran_date=tran_date, subsidiary=subsidiary,
                                items=[{"account": {"id": account}, "debit": amount},
                                       {"account": {"id": against}, "credit": amount}])

    def duplicate(self, ref: str) -> dict:
        """"Make Copy" and save: the same memo, date and lines; NetSuite does not copy the external id."""
        source = self.find(ref)
        return self._new_record(memo=source.get("memo", ""), tran_date=source["tranDate"],
                                subsidiary=(source.get("subsidiary") or {}).get("id", "1"),
                                items=[dict(item, account=dict(item["account"])) for item in source["line"]["items"]])


_TOKENS = (("HH24", "%H"), ("MI", "%M"), ("SS", "%S"), ("YYYY", "%Y"), ("MM", "%m"), ("DD", "%d"))


def _strftime_format(fmt: str) -> str:
    for token, directive in _TOKENS:
        fmt = fmt.replace(token, directive)
    return fmt.replace('"T"', "T")


def _to_char(value, fmt):
    if value is None:
        return None
    if fmt is None:
        return str(value)
    return datetime.datetime.fromisoformat(str(value)).strftime(_strftime_format(fmt))


def _to_date(text, fmt):
    return datetime.datetime.strptime(str(text), _strftime_format(fmt)).date().isoformat()


def _to_timestamp(text, fmt):
    return datetime.datetime.strptime(str(text), _strftime_format(fmt)).strftime("%Y-%m-%d %H:%M:%S")


def _run_suiteql(transactions: list[dict], query: str) -> tuple[list[str], list[tuple]]:
    """The query on an in-memory SQLite copy of the books (dates as ISO text, NetSuite's T/F flags)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.create_function("TO_CHAR", 2, _to_char, deterministic=True)
        conn.create_function("TO_DATE", 2, _to_date, deterministic=True)
        conn.create_function("TO_TIMESTAMP", 2, _to_timestamp, deterministic=True)
        conn.executescript("""
            CREATE TABLE "transaction" (id INTEGER PRIMARY KEY, tranid TEXT, externalid TEXT, recordtype TEXT,
                trandate TEXT, lastmodifieddate TEXT, memo TEXT, voided TEXT, posting TEXT);
            CREATE TABLE transactionline (id INTEGER, "transaction" INTEGER, subsidiary INTEGER, memo TEXT);
            CREATE TABLE transactionaccountingline ("transaction" INTEGER, transactionline INTEGER, account TEXT,
                accountingbook INTEGER, debit REAL, credit REAL, amount REAL, posting TEXT);""")
        for record in transactions:
            posting = "T" if record.get("posting", True) and not record.get("voided") else "F"
            modified = datetime.datetime.fromisoformat(record.get("lastModifiedDate", "1970-01-01T00:00:00Z")
                                                       .replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
            conn.execute('INSERT INTO "transaction" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
                         (int(record["id"]), record["tranId"], record.get("externalId"), "journalentry",
                          record["tranDate"], modified, record.get("memo"),
                          "T" if record.get("voided") else "F", "T" if record.get("posting", True) else "F"))
            subsidiary = int((record.get("subsidiary") or {}).get("id") or 1)
            for number, item in enumerate(record["line"]["items"]):
                debit = float(item.get("debit") or 0) or None
                credit = float(item.get("credit") or 0) or None
                conn.execute("INSERT INTO transactionline VALUES (?, ?, ?, ?)",
                             (number, int(record["id"]), subsidiary, item.get("memo")))
                conn.execute("INSERT INTO transactionaccountingline VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                             (int(record["id"]), number, str(item["account"]["id"]), debit, credit,
                              (debit or 0) - (credit or 0), posting))
        # TRANSACTION is an SQLite keyword: the table and column of that name are quoted for SQLite.
        cursor = conn.execute(re.sub(r'(?<![\w"])transaction(?![\w"])', '"transaction"', query, flags=re.IGNORECASE))
        return [column[0].lower() for column in cursor.description], cursor.fetchall()
    finally:
        conn.close()


def _text(value) -> str:
    if isinstance(value, float):
        return repr(round(value, 6)).removesuffix(".0") if value == int(value) else repr(round(value, 6))
    return str(value)


def _read(handler: StandinHandler) -> bytes:
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _copy(record: dict) -> dict:
    return {**record, "line": {"items": [dict(i) for i in record["line"]["items"]]}}
