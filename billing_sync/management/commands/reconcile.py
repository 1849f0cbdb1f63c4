"""`manage.py reconcile ENTITY [--from YYYY-MM-DD] [--to YYYY-MM-DD] [--full]`: run a reconciliation of one entity
here and now (billing ↔ ledger ↔ ERP, `billing_sync.services.reconciliation_run`), with a progress bar when
stdout is a terminal. Defaults: `--from` is the first day of the earliest open month among the last
TIEOUT_RECONCILIATION_OPEN_MONTHS (months without a closed period), or of the current month when they are all
closed; `--to` is today; without `--full` the run is incremental (the ERP documents changed since the last
finished run started). The last line printed is one JSON object: `{"run": "<id>", "entity", "from", "to",
"matched": n, "breaks": {"<code>": n}, "resolved": n}`. Exit status 0 whether or not there are breaks; non-zero
only when the run itself failed (the error on stderr) or could not start (another run of the entity runs)."""
import datetime
import json
import sys

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from billing_sync import services
from config import correlation
from config.errors import TieoutError
from ledger.selectors import entity_for_code

ACTOR = "cli:reconcile"


def _date(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = "Reconcile an entity's billing documents, ledger and ERP over a date range."

    def add_arguments(self, parser):
        parser.add_argument("entity", help="Entity code, e.g. US01")
        parser.add_argument("--from", dest="date_from", help="First day (default: first day of the earliest open "
                                                             "month, or of the current month)")
        parser.add_argument("--to", dest="date_to", help="Last day (default: today)")
        parser.add_argument("--full", action="store_true",
                            help="Read the whole range back from the ERP and compare balances (default: incremental)")

    def handle(self, *args, entity, date_from, date_to, full, **options):
        target = entity_for_code(entity)
        if target is None:
            raise CommandError(f"no entity {entity}")
        default_from, default_to = services.default_range(target)
        start = _date(date_from) if date_from else default_from
        end = _date(date_to) if date_to else default_to
        with correlation.bound(None):
            try:
                if self.stdout.isatty():
                    run = self._with_progress(target, start, end, full)
                else:
                    run = services.reconciliation_run(entity=target, date_from=start, date_to=end, full=full,
                                                      actor=ACTOR)
            except TieoutError as exc:
                raise CommandError(f"{exc.code}: {exc.detail}") from None
        self.stdout.write(json.dumps({"run": str(run.pk), "entity": target.code, "from": start.isoformat(),
                                      "to": end.isoformat(), "matched": run.matched, "breaks": run.breaks,
                                      "resolved": run.resolved}))
        if run.status != "finished":
            raise CommandError(f"reconciliation run {run.pk} {run.status}: {run.error}")

    def _with_progress(self, target, start, end, full):
        columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), TextColumn("{task.fields[detail]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=Console(file=sys.stdout), transient=True) as progress:
            task = progress.add_task(f"Reconciling {target.code} {start}..{end}", total=None, detail="")

            def report(step: str, count: int | None = None):
                detail = f"{step}: {count:,}" if count is not None else f"{step} done"
                progress.update(task, detail=detail)

            return services.reconciliation_run(entity=target, date_from=start, date_to=end, full=full, actor=ACTOR,
                                               progress=report)
