"""`manage.py retention_policy KIND [--entity CODE] [--keep-months N] [--location DIR]`: print the retention
policies of receipts, events or audit entries (the default and each entity's), or set the default or one
entity's (`portal.services.retention_policy_set`, audited); only the default has a location."""
from django.core.management.base import BaseCommand, CommandError

from portal import services
from portal.models import RetentionPolicy


class Command(BaseCommand):
    help = "Show or set how long receipts, events or audit entries stay in the database after their month ends."

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=["receipts", "events", "audit_entries"])
        parser.add_argument("--entity", default=None, help="an entity's policy (default: the kind's default)")
        parser.add_argument("--keep-months", type=int)
        parser.add_argument("--location", default=None, help="directory of the archive packs (default policy only)")

    def handle(self, *args, kind, entity, keep_months, location, **options):
        if keep_months is not None or location is not None:
            policy = RetentionPolicy.objects.filter(kind=kind, entity__code=entity) if entity else \
                RetentionPolicy.objects.filter(kind=kind, entity__isnull=True)
            policy = policy.first()
            try:
                services.retention_policy_set(
                    kind=kind, entity=entity,
                    keep_months=keep_months if keep_months is not None else (policy.keep_months if policy else 84),
                    location=location if location is not None else (policy.location if policy else ""),
                    actor="cli:retention_policy")
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        default, own = services.retention_policies(kind)
        if default is None:
            self.stdout.write(f"{kind}: no default policy (entities without their own are never archived)")
        else:
            self.stdout.write(f"{kind}: kept {default.keep_months} months after the month ends; packs in "
                              f"{default.location or 'TIEOUT_RETENTION_DIR'}")
        for code, policy in sorted(own.items()):
            self.stdout.write(f"{kind} of {code}: kept {policy.keep_months} months after the month ends")
