"""`manage.py close_period ENTITY YYYY-MM`: close a monthly accounting period when every close check passes
(`portal.services.period_close`, recording the checks); with a check failing it closes nothing, prints the
failing checks and exits non-zero. Closing anyway and reopening need a second controller's approval, asked for
by a person on the close page or the API (`--reopen` says so and changes nothing)."""
from django.core.management.base import BaseCommand, CommandError

from config import correlation
from config.errors import TieoutError
from ledger import selectors as ledger_selectors
from portal import services
from portal.selectors import close as close_selectors


class Command(BaseCommand):
    help = "Close an accounting period when its close checks pass; nothing is posted into a closed period."

    def add_arguments(self, parser):
        parser.add_argument("entity")
        parser.add_argument("period", help="YYYY-MM")
        parser.add_argument("--reopen", action="store_true",
                            help="refused: reopening needs a second controller's approval (close page or API)")

    def handle(self, *args, entity, period, reopen, **options):
        entity_obj = ledger_selectors.entity_for_code(entity)
        if entity_obj is None:
            raise CommandError(f"no entity {entity}")
        month = close_selectors.parse_month(period)
        if month is None:
            raise CommandError("period must be YYYY-MM")
        year, month = month
        if reopen:
            raise CommandError("reopening always needs a second controller's approval: ask for it on the close page "
                               f"(/close/{entity_obj.code}/{year}-{month:02d}/) or POST "
                               f"/api/v1/periods/{entity_obj.code}/{year}-{month:02d}/reopen")
        with correlation.bound(None):
            try:
                outcome = services.period_close(entity=entity_obj, year=year, month=month, actor="cli:close_period")
            except TieoutError as refused:
                lines = [f"{entity_obj.code} {year}-{month:02d} not closed: {refused.detail} ({refused.code})"]
                lines += [f"  {e['field']}: {e['message']}" for e in refused.errors or []]
                raise CommandError("\n".join(lines)) from None
        self.stdout.write(f"{entity_obj.code} {year}-{month:02d} {outcome.period.status}")
