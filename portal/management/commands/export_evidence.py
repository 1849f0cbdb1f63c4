"""`manage.py export_evidence --entity CODE --from DATE --to DATE OUT.zip`: streams an entity's evidence pack
(CSVs, signed digests, public key, README and the standalone verifier) into OUT.zip; check it anywhere with
`python3 verify_evidence.py OUT.zip --public-key KEY.pem`."""
import datetime
import os

from django.core.management.base import BaseCommand, CommandError

from ledger.models import Entity
from portal.evidence import export_evidence


def _date(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {value!r}") from None


class Command(BaseCommand):
    help = "Export an entity's evidence pack for a period (UTC days, inclusive) into a zip file."

    def add_arguments(self, parser):
        parser.add_argument("--entity", required=True)
        parser.add_argument("--from", dest="date_from", required=True, type=_date)
        parser.add_argument("--to", dest="date_to", required=True, type=_date)
        parser.add_argument("out")

    def handle(self, *args, **options):
        if not Entity.objects.filter(code=options["entity"]).exists():
            raise CommandError(f"unknown entity {options['entity']!r}")
        if options["date_to"] < options["date_from"]:
            raise CommandError("--to is before --from")
        out = options["out"]
        partial = f"{out}.partial"
        try:
            with open(partial, "wb") as handle:
                summary = export_evidence(entity_code=options["entity"], date_from=options["date_from"],
                                          date_to=options["date_to"], out=handle, name=os.path.basename(out),
                                          actor="manage.py export_evidence")
            os.replace(partial, out)  # never leave a half-written pack under the final name
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        rows = ", ".join(f"{k} {v}" for k, v in summary.rows.items() if v is not None)
        self.stdout.write(f"wrote {out}: {rows}; chain seq {summary.first_seq}..{summary.last_seq}, "
                          f"{summary.digests} signed digest(s)")
