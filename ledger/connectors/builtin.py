"""The built-in ERP: numbers journals `JE-{ENTITY}-{YYYY}-{NNNNNN}`, gapless per entity and year. The
number comes from a row-locked counter inside the transaction that marks the journal posted, so a
rolled-back posting gives its number back and two concurrent postings never share or skip one."""
from ledger.connectors.base import Connector, PostResult
from ledger.models import DocumentSequence, Journal


class BuiltinConnector(Connector):
    name = "builtin"
    in_database = True

    def post_journal(self, journal: Journal) -> PostResult:
        existing = self.lookup(journal)
        if existing:
            return existing
        year = journal.accounting_date.year
        DocumentSequence.objects.get_or_create(entity=self.entity, year=year)
        sequence = DocumentSequence.objects.select_for_update().get(entity=self.entity, year=year)
        sequence.last_number += 1
        sequence.save(update_fields=["last_number"])
        return PostResult(f"JE-{self.entity.code}-{year}-{sequence.last_number:06d}")

    def lookup(self, journal: Journal) -> PostResult | None:
        ref = Journal.objects.filter(pk=journal.pk).values_list("erp_document_ref", flat=True).first()
        return PostResult(ref, already_existed=True) if ref else None

    def test_connection(self) -> str:
        return "built-in ledger: always available"
