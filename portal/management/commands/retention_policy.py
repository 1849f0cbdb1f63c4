"""`manage.py retention_policy KIND [--keep-months N] [--location DIR]`: print the retention policy of receipts,
events or audit entries, or set it (`portal.services.retention_policy_set`, audited)."""
from django.core.management.base import BaseCommand

from portal import services
from portal.models import RetentionPolicy


class Command(BaseCommand):
    help = "Show or set how long receipts, events or audit entries stay in the database after their month ends."

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=["receipts", "events", "audit_entries"])
        parser.add_argument("--keep-months", type=int)
        parser.add_argument("--location", default=None, help="directory of the archive packs")

    def handle(self, *args, kind, keep_months, location, **options):
        policy = RetentionPolicy.objects.filter(kind=kind).first()
        if keep_months is not None or location is not None:
            policy = services.retention_policy_set(
                kind=kind, keep_months=keep_months if keep_months is not None else (policy.keep_months if policy else 84),
                location=location if location is not None else (policy.location if policy else ""),
                actor="cli:retention_policy")
        if policy is None:
            self.stdout.write(f"{kind}: no policy (never archived)")
            return
        self.stdout.write(f"{kind}: kept {policy.keep_months} months after the month ends; packs in "
                          f"{policy.location or 'TIEOUT_RETENTION_DIR'}")
