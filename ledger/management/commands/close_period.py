"""`manage.py close_period ENTITY YYYY-MM [--reopen]`: close (or reopen) a monthly accounting period."""
from django.core.management.base import BaseCommand, CommandError

from config import correlation
from ledger import services
from ledger.models import Entity, Period


class Command(BaseCommand):
    help = "Close or reopen an accounting period; nothing is posted into a closed period."

    def add_arguments(self, parser):
        parser.add_argument("entity")
        parser.add_argument("period", help="YYYY-MM")
        parser.add_argument("--reopen", action="store_true")

    def handle(self, *args, entity, period, reopen, **options):
        entity_obj = Entity.objects.filter(code=entity).first()
        if entity_obj is None:
            raise CommandError(f"no entity {entity}")
        try:
            year, month = (int(p) for p in period.split("-"))
        except ValueError:
            raise CommandError("period must be YYYY-MM") from None
        with correlation.bound(None):
            result = services.period_set_status(entity=entity_obj, year=year, month=month,
                                                status=Period.Status.OPEN if reopen else Period.Status.CLOSED,
                                                actor="cli:close_period")
        self.stdout.write(f"{entity_obj.code} {year}-{month:02d} {result.status}")
