"""`manage.py export_ledger --entity CODE [--from DATE] [--to DATE] [--format csv|beancount] OUT`: an entity's
posted journals for a period as CSV or as a Beancount file (see `portal.ledger_export`), streamed into OUT
(`-` for stdout). The last line of stdout says what was written (or, with OUT `-`, the file itself ends it)."""
import datetime
import os
import sys

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ledger import selectors
from portal import ledger_export


def _date(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {value!r}") from None


class Command(BaseCommand):
    help = "Export an entity's posted journals for a period (both days included) as CSV or Beancount."

    def add_arguments(self, parser):
        parser.add_argument("--entity", required=True)
        parser.add_argument("--from", dest="date_from", type=_date, help="default: the first of --to's month")
        parser.add_argument("--to", dest="date_to", type=_date, help="default: today")
        parser.add_argument("--format", choices=ledger_export.FORMATS, default="csv")
        parser.add_argument("out", help="the file to write, or - for stdout")

    def handle(self, *args, **options):
        entity = selectors.entity_for_code(options["entity"])
        if entity is None:
            raise CommandError(f"unknown entity {options['entity']!r}")
        date_to = options["date_to"] or timezone.localdate()
        date_from = options["date_from"] or date_to.replace(day=1)
        if date_to < date_from:
            raise CommandError("--to is before --from")
        ledger_export.record_export(entity, date_from, date_to, options["format"], actor="command:export_ledger",
                                    via="command")
        chunks = ledger_export.chunks(entity, date_from, date_to, options["format"])
        out = options["out"]
        if out == "-":
            for chunk in chunks:
                sys.stdout.write(chunk)
            return
        partial = f"{out}.partial"
        size = 0
        try:
            with open(partial, "w", encoding="utf-8", newline="") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    size += len(chunk)
            os.replace(partial, out)  # never leave a half-written export under the final name
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        self.stdout.write(f"wrote {out}: {entity.code} {date_from}..{date_to} {options['format']}, {size} characters")
