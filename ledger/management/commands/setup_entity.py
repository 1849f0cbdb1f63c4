"""`manage.py setup_entity CODE --currency USD [--name ...] [--erp builtin]`: idempotent entity set-up."""
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from config import correlation
from config.errors import TieoutError
from exceptions_queue import services as queue
from ledger import services


class Command(BaseCommand):
    help = "Create a legal entity with the default chart of accounts, posting-rule mappings and approval policy."

    def add_arguments(self, parser):
        parser.add_argument("code")
        parser.add_argument("--currency", required=True)
        parser.add_argument("--name")
        parser.add_argument("--erp", default="builtin")

    def handle(self, *args, code, currency, name, erp, **options):
        with correlation.bound(None), transaction.atomic():
            try:
                entity, created = services.entity_setup(code=code, currency=currency, name=name, erp=erp,
                                                        actor="cli:setup_entity")
            except TieoutError as exc:
                raise CommandError(exc.detail) from None
            queue.approval_policy_ensure(entity=entity, actor="cli:setup_entity")
        self.stdout.write(f"{'created' if created else 'exists'} {entity.code} {entity.currency}")
        self.stdout.write(entity.code)
