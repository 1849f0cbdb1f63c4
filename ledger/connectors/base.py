"""The ERP connector interface and its three failure classes. A connector posts one journal, looks one up
by our reference (the journal id), reads the ERP back for reconciliation (documents carrying our reference,
and posted movements per account and month) and tests its connection; every failure is raised as exactly one of
`TransientError` (nothing was applied; retry after `retry_after` seconds, or backoff), `PermanentError`
(the ERP refused: validation, authentication, closed period; do not retry) or `AmbiguousError` (the request
may have been applied: timeout after sending, 502/504; look the journal up by our reference before sending
again)."""
import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal


class ConnectorError(Exception):
    # Set by the ledger service that recorded this failure on the journal or batch (`scheduled`, and the due
    # time of the next attempt it stored, None when nothing more is due); left unset when nothing was recorded.
    scheduled = False
    next_attempt_at = None

    def __init__(self, message: str, *, erp_message: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.erp_message = erp_message or message
        self.retry_after = retry_after


class TransientError(ConnectorError):
    pass


class PermanentError(ConnectorError):
    pass


class AmbiguousError(ConnectorError):
    pass


@dataclass(frozen=True)
class PostResult:
    erp_document_ref: str
    already_existed: bool = False


@dataclass(frozen=True)
class ErpLine:
    """One line of an ERP document as the ERP holds it; `account` is our account code (mapped back from the
    ERP's name through `Account.erp_account`; an account we do not know keeps the ERP's name)."""

    account: str
    debit: Decimal
    credit: Decimal


@dataclass(frozen=True)
class ErpDocument:
    """An ERP document that carries Tieout's reference (`our_ref`: the journal's or batch's id)."""

    class Status:
        POSTED = "posted"
        CANCELLED = "cancelled"
        DRAFT = "draft"

    # The ERP's document reference, as posting recorded it in `erp_document_ref`: ERPNext name, Odoo move name
    # (`id:<n>` for a draft Odoo has not numbered), NetSuite tranId (else internal id), JE-... for built-in.
    ref: str
    our_ref: str
    status: str
    posting_date: datetime.date
    lines: tuple[ErpLine, ...] = field(default_factory=tuple)
    modified: datetime.datetime | None = None


@dataclass(frozen=True)
class ErpMovement:
    """The ERP's posted movement on one of our accounts in one month (every document, ours or not)."""

    account: str  # our account code
    month: str  # YYYY-MM
    debit: Decimal
    credit: Decimal


class Connector:
    """Base class. `in_database` connectors (the built-in one) post inside our own transaction.

    Read-back (reconciliation) is paged and read-only: a connector raises `TransientError` only once its
    own retries of rate limits and transient answers are spent, and counts the requests it made in
    `requests_made`.
    """

    name = "base"
    in_database = False
    # The read-back names accounts through the ERP's chart (`Account.erp_account`, `readback.AccountNames`): two of
    # our accounts the ERP holds as one come back as the lower code. The built-in ERP reads our own codes.
    erp_account_names = True

    def __init__(self, entity):
        self.entity = entity
        self.requests_made = 0

    def post_journal(self, journal) -> PostResult:
        raise NotImplementedError

    def lookup(self, journal) -> PostResult | None:
        raise NotImplementedError

    def test_connection(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- read-back
    def erp_documents(self, *, date_from: datetime.date, date_to: datetime.date,
                      modified_since: datetime.datetime | None = None) -> Iterator[ErpDocument]:
        """Every ERP document carrying our reference with a posting date in the range (cancelled and draft ones
        too), with its lines; only those modified at or after `modified_since` (aware) when it is given
        (incremental). A field holding something that is not of our reference's form (a UUID) is a person's
        use of it: that document is not ours. Deleted documents cannot be seen this way: `erp_document(ref)`
        answers None for them."""
        raise NotImplementedError

    def erp_document(self, ref: str) -> ErpDocument | None:
        """One ERP document by the ERP's reference, with its lines; None when the ERP no longer has it."""
        raise NotImplementedError

    def account_movements(self, *, date_from: datetime.date, date_to: datetime.date,
                          accounts: Iterable[str]) -> Iterator[ErpMovement]:
        """The ERP's posted (not cancelled, not draft) debit and credit per account (our codes) and month in the
        range, every document counted, ours or not; account-months without a posted line are left out (zero).
        In account then month order."""
        raise NotImplementedError
