"""The ERP connector interface and its three failure classes. A connector posts one journal, looks one up
by our reference (the journal id) and tests its connection; every failure is raised as exactly one of
`TransientError` (nothing was applied; retry after `retry_after` seconds, or backoff), `PermanentError`
(the ERP refused: validation, authentication, closed period; do not retry) or `AmbiguousError` (the request
may have been applied: timeout after sending, 502/504; look the journal up by our reference before sending
again)."""
from dataclasses import dataclass


class ConnectorError(Exception):
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


class Connector:
    """Base class. `in_database` connectors (the built-in one) post inside our own transaction."""

    name = "base"
    in_database = False

    def __init__(self, entity):
        self.entity = entity

    def post_journal(self, journal) -> PostResult:
        raise NotImplementedError

    def lookup(self, journal) -> PostResult | None:
        raise NotImplementedError

    def test_connection(self) -> str:
        raise NotImplementedError
