"""An ERP for reconciliation tests, until the vendor stand-ins serve the read-back: the built-in connector
(posting in our own database) whose read-back mirrors our posted journals, as the built-in ERP's own records,
with the changes a test makes to "the ERP" on top: a document deleted, cancelled, edited (amount, date), a
second document for a journal, one with a reference we do not know, a manual entry on an account.

Registered for one test only (`mirror_erp` fixture: `ledger.connectors.REGISTRY["builtin"]` points here), or
passed to `reconciliation_run(connector=...)`. The state is class-level because the ledger makes a new
connector for every call."""
import datetime
from dataclasses import dataclass, field, replace
from decimal import Decimal

from django.utils import timezone

from ledger import services as ledger
from ledger.connectors.base import ErpDocument, ErpLine, ErpMovement, PostResult, TransientError
from ledger.connectors.builtin import BuiltinConnector
from ledger.models import ErpBatch, Journal


@dataclass
class ErpState:
    deleted: set = field(default_factory=set)
    cancelled: dict = field(default_factory=dict)  # ref -> when
    lines: dict = field(default_factory=dict)  # ref -> [(account, debit, credit)], when
    dates: dict = field(default_factory=dict)  # ref -> posting date
    extra: list = field(default_factory=list)  # ErpDocument
    manual: list = field(default_factory=list)  # (account, date, debit, credit): entries without our reference
    modified: dict = field(default_factory=dict)  # ref -> when the test changed it
    fail: str | None = None  # read-back raises TransientError with this message
    lookups: list = field(default_factory=list)  # refs asked for one by one

    def touch(self, ref):
        self.modified[ref] = timezone.now()


class MirrorConnector(BuiltinConnector):
    state = ErpState()

    @classmethod
    def reset(cls):
        cls.state = ErpState()
        return cls.state

    # ------------------------------------------------------------------ the ERP's documents
    def _ours(self):
        for journal in (Journal.objects.filter(entity=self.entity, status=Journal.Status.POSTED, erp_batch__isnull=True)
                        .prefetch_related("lines__account").order_by("posted_at")):
            sums: dict[str, list[Decimal]] = {}
            for line in journal.lines.all():
                pair = sums.setdefault(line.account.code, [Decimal(0), Decimal(0)])
                pair[0] += line.debit
                pair[1] += line.credit
            yield ErpDocument(ref=journal.erp_document_ref, our_ref=str(journal.pk), status=ErpDocument.Status.POSTED,
                              posting_date=journal.accounting_date,
                              lines=tuple(ErpLine(a, d, c) for a, (d, c) in sorted(sums.items())),
                              modified=journal.posted_at)
        for batch in ErpBatch.objects.filter(entity=self.entity, status=ErpBatch.Status.POSTED).prefetch_related(
                "lines__account"):
            yield ErpDocument(ref=batch.erp_document_ref, our_ref=str(batch.pk), status=ErpDocument.Status.POSTED,
                              posting_date=batch.accounting_date,
                              lines=tuple(ErpLine(bl.account.code, bl.debit, bl.credit) for bl in batch.lines.all()),
                              modified=batch.posted_at)

    def _docs(self):
        state = self.state
        for doc in [*self._ours(), *state.extra]:
            if doc.ref in state.deleted:
                continue
            if doc.ref in state.cancelled:
                doc = replace(doc, status=ErpDocument.Status.CANCELLED)
            if doc.ref in state.lines:
                doc = replace(doc, lines=tuple(ErpLine(a, Decimal(d), Decimal(c)) for a, d, c in state.lines[doc.ref]))
            if doc.ref in state.dates:
                doc = replace(doc, posting_date=state.dates[doc.ref])
            if doc.ref in state.modified:
                doc = replace(doc, modified=state.modified[doc.ref])
            yield doc

    # ------------------------------------------------------------------ posting (re-posts)
    def lookup(self, journal):
        """Our reference, as the ERP holds it: none when the test deleted or cancelled the journal's document."""
        ref = ledger.effective_erp_ref(journal) if journal.status == Journal.Status.POSTED else None
        if ref is None:
            return super().lookup(journal)
        if ref in self.state.deleted or ref in self.state.cancelled:
            return None
        return PostResult(ref, already_existed=True)

    def post_journal(self, journal):
        if journal.status != Journal.Status.POSTED:
            return super().post_journal(journal)
        ref = f"JE-R-{len(self.state.extra) + 1:04d}"  # a re-post: the ERP makes a new document
        sums = {}
        for line in journal.lines.select_related("account"):
            pair = sums.setdefault(line.account.code, [Decimal(0), Decimal(0)])
            pair[0] += line.debit
            pair[1] += line.credit
        self.state.extra.append(document(ref, str(journal.pk), [(a, d, c) for a, (d, c) in sorted(sums.items())],
                                         posting_date=journal.accounting_date))
        return PostResult(ref)

    def _check(self):
        self.requests_made += 1
        if self.state.fail:
            raise TransientError(self.state.fail, erp_message=self.state.fail)

    def erp_documents(self, *, date_from, date_to, modified_since=None):
        self._check()
        for doc in self._docs():
            if date_from <= doc.posting_date <= date_to and (
                    modified_since is None or doc.modified is None or doc.modified >= modified_since):
                yield doc

    def erp_document(self, ref):
        self._check()
        self.state.lookups.append(ref)
        return next((doc for doc in self._docs() if doc.ref == ref), None)

    def account_movements(self, *, date_from, date_to, accounts):
        self._check()
        accounts = set(accounts)
        sums: dict[tuple[str, str], list[Decimal]] = {}

        def add(account, day, debit, credit):
            if account in accounts and date_from <= day <= date_to:
                pair = sums.setdefault((account, f"{day:%Y-%m}"), [Decimal(0), Decimal(0)])
                pair[0] += Decimal(debit)
                pair[1] += Decimal(credit)

        for doc in self._docs():
            if doc.status == ErpDocument.Status.POSTED:
                for line in doc.lines:
                    add(line.account, doc.posting_date, line.debit, line.credit)
        for account, day, debit, credit in self.state.manual:
            add(account, day, debit, credit)
        for (account, month), (debit, credit) in sorted(sums.items()):
            yield ErpMovement(account=account, month=month, debit=debit, credit=credit)


def document(ref, our_ref, lines, *, posting_date=datetime.date(2026, 11, 1), status=ErpDocument.Status.POSTED):
    """An ERP document as a test adds it (`lines`: (account, debit, credit))."""
    return ErpDocument(ref=ref, our_ref=our_ref, status=status, posting_date=posting_date,
                       lines=tuple(ErpLine(a, Decimal(d), Decimal(c)) for a, d, c in lines),
                       modified=timezone.now())
