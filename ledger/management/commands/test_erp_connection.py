"""`manage.py test_erp_connection CODE`: ask the entity's ERP who we are; exit 1 with its message if it fails."""
from django.core.management.base import BaseCommand, CommandError

from ledger import connectors, services
from ledger.models import Entity


class Command(BaseCommand):
    help = "Test the ERP connection of an entity."

    def add_arguments(self, parser):
        parser.add_argument("code")

    def handle(self, *args, code, **options):
        entity = Entity.objects.filter(code=code).first()
        if entity is None:
            raise CommandError(f"no entity {code}")
        try:
            message = services.entity_test_connection(entity=entity)
        except connectors.base.ConnectorError as exc:
            raise CommandError(f"{entity.erp_connector}: {exc} ({exc.erp_message})") from None
        self.stdout.write(f"OK {entity.erp_connector}: {message}")
