"""The built-in ERP: numbers journals `JE-{ENTITY}-{YYYY}-{NNNNNN}`, gapless per entity and year. The
number comes from a row-locked counter inside the transaction that marks the journal posted, so a
rolled-back posting gives its number back and two concurrent postings never share or skip one. Read back,
its documents are our own posted records (journals posted alone, and posted ERP batches, with their lines),
read page by page through the same interface as an external ERP (`requests_made` counts the queries), and its
movements are our posted journal lines summed per account and month by PostgreSQL."""
import datetime
from collections.abc import Iterable, Iterator

from django.db import connection
from django.db.models import Sum
from django.db.models.functions import TruncMonth

from ledger.connectors.base import Connector, ErpDocument, ErpLine, ErpMovement, PostResult
from ledger.models import DocumentSequence, ErpBatch, ErpBatchLine, Journal, JournalLine

PAGE_SIZE = 500


class BuiltinConnector(Connector):
    name = "builtin"
    in_database = True
    erp_account_names = False

    def post_journal(self, journal: Journal) -> PostResult:
        existing = self.lookup(journal)
        if existing:
            return existing
        return self.post_journals([journal])[journal.pk]

    def post_journals(self, journals: list[Journal]) -> dict:
        """`post_journal` for many journals of this entity at once, numbered in the order given: one statement per
        year takes the year's whole range (`RETURNING` its last number), so the counter's row is locked once per
        call, in the caller's transaction, as late as the caller asks for numbers. Returns {journal pk: result}.
        Journals already numbered (an earlier delivery's) keep their number."""
        results = {j.pk: PostResult(j.erp_document_ref, already_existed=True) for j in journals if j.erp_document_ref}
        by_year: dict[int, list[Journal]] = {}
        for journal in journals:
            if journal.pk not in results:
                by_year.setdefault(journal.accounting_date.year, []).append(journal)
        for year, todo in sorted(by_year.items()):
            # One statement: the year's counter made if missing, advanced by the whole range, and read back.
            with connection.cursor() as cursor:
                cursor.execute(f"""
                    INSERT INTO {DocumentSequence._meta.db_table} AS s (entity_id, year, last_number)
                    VALUES (%s, %s, %s)
                    ON CONFLICT (entity_id, year) DO UPDATE SET last_number = s.last_number + EXCLUDED.last_number
                    RETURNING last_number""", [self.entity.pk, year, len(todo)])
                last = cursor.fetchone()[0]
            for offset, journal in enumerate(todo):
                number = last - len(todo) + 1 + offset
                results[journal.pk] = PostResult(f"JE-{self.entity.code}-{year}-{number:06d}")
        return results

    def lookup(self, journal: Journal) -> PostResult | None:
        ref = Journal.objects.filter(pk=journal.pk).values_list("erp_document_ref", flat=True).first()
        return PostResult(ref, already_existed=True) if ref else None

    def test_connection(self) -> str:
        return "built-in ledger: always available"

    # ------------------------------------------------------------------------------------------- read-back
    def _pages(self, headers, line_model, parent_field: str) -> Iterator[ErpDocument]:
        """`headers` (posted journals or batches) a page at a time, keyed by id, each page's lines in one query."""
        headers = headers.order_by("pk").values("pk", "erp_document_ref", "accounting_date", "posted_at")
        after = None
        while True:
            page = list((headers.filter(pk__gt=after) if after is not None else headers)[:PAGE_SIZE])
            self.requests_made += 1
            if not page:
                return
            lines: dict = {}
            rows = (line_model.objects.filter(**{f"{parent_field}__in": [h["pk"] for h in page]})
                    .order_by(parent_field, "pk").values_list(parent_field, "account__code", "debit", "credit"))
            for parent, account, debit, credit in rows:
                lines.setdefault(parent, []).append(ErpLine(account=account, debit=debit, credit=credit))
            self.requests_made += 1
            for header in page:
                yield self._document(header, lines.get(header["pk"], ()))
            if len(page) < PAGE_SIZE:
                return
            after = page[-1]["pk"]

    @staticmethod
    def _document(header: dict, lines) -> ErpDocument:
        return ErpDocument(ref=header["erp_document_ref"], our_ref=str(header["pk"]), status=ErpDocument.Status.POSTED,
                           posting_date=header["accounting_date"], lines=tuple(lines), modified=header["posted_at"])

    def _journals(self):
        return Journal.objects.filter(entity=self.entity, status=Journal.Status.POSTED, erp_batch__isnull=True)

    def _batches(self):
        return ErpBatch.objects.filter(entity=self.entity, status=ErpBatch.Status.POSTED)

    def erp_documents(self, *, date_from: datetime.date, date_to: datetime.date,
                      modified_since: datetime.datetime | None = None) -> Iterator[ErpDocument]:
        """Journals posted alone, then posted batches (journals posted in a batch are in their batch's
        document); `modified` is when they were posted (posted records never change)."""
        window = {"accounting_date__range": (date_from, date_to)}
        if modified_since is not None:
            window["posted_at__gte"] = modified_since
        yield from self._pages(self._journals().filter(**window), JournalLine, "journal_id")
        yield from self._pages(self._batches().filter(**window), ErpBatchLine, "batch_id")

    def erp_document(self, ref: str) -> ErpDocument | None:
        for headers, line_model, parent_field in ((self._journals(), JournalLine, "journal_id"),
                                                  (self._batches(), ErpBatchLine, "batch_id")):
            found = list(self._pages(headers.filter(erp_document_ref=ref), line_model, parent_field))
            if found:
                return found[0]
        return None

    def account_movements(self, *, date_from: datetime.date, date_to: datetime.date,
                          accounts: Iterable[str]) -> Iterator[ErpMovement]:
        """Posted journal lines (batched ones too: a batch's lines are their sums) per account and month."""
        codes = sorted(set(accounts))
        if not codes:
            return
        rows = (JournalLine.objects
                .filter(journal__entity=self.entity, journal__status=Journal.Status.POSTED,
                        journal__accounting_date__range=(date_from, date_to), account__code__in=codes)
                .annotate(month=TruncMonth("journal__accounting_date"))
                .values("account__code", "month").annotate(debit=Sum("debit"), credit=Sum("credit"))
                .order_by("account__code", "month"))
        self.requests_made += 1
        for row in rows:
            yield ErpMovement(account=row["account__code"], month=f"{row['month']:%Y-%m}", debit=row["debit"],
                              credit=row["credit"])
