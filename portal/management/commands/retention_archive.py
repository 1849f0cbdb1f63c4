"""`manage.py retention_archive KIND YYYY-MM [--pack PATH] [--no-detach]`: archive one closed month of receipts,
events or audit entries (KIND: receipts, events, audit_entries) into a signed pack, verify it and only then
detach and drop the month's partition (`portal.services.retention_archive`); refused (exit non-zero, with the
`retention_*` code) for an open or too recent month or a pack that does not verify. `--no-detach` writes and
verifies the pack only; `--pack` verifies a copy (where archives are kept) and detaches with it."""
from django.core.management.base import BaseCommand, CommandError

from config import correlation
from config.errors import TieoutError
from portal import services


class Command(BaseCommand):
    help = "Archive a closed month's partition into a signed, verified pack, then detach it."

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=["receipts", "events", "audit_entries"])
        parser.add_argument("month", help="YYYY-MM")
        parser.add_argument("--pack", help="a pack written earlier (e.g. its copy in cold storage) to verify and use")
        parser.add_argument("--no-detach", action="store_true", help="write and verify the pack, detach nothing")

    def handle(self, *args, kind, month, pack, no_detach, **options):
        with correlation.bound(None):
            try:
                outcome = services.retention_archive(kind=kind, month=month, actor="cli:retention_archive",
                                                     pack=pack, detach=not no_detach)
            except ValueError:
                raise CommandError("month must be YYYY-MM") from None
            except TieoutError as refused:
                raise CommandError(f"{kind} {month} not archived: {refused.detail} ({refused.code})") from None
        done = "archived and detached" if outcome.detached else "archived (pack verified, nothing detached)"
        self.stdout.write(f"{kind} {outcome.month:%Y-%m} {done}: {outcome.rows} rows in {outcome.path} "
                          f"(sha256 {outcome.pack_sha256})")
        if outcome.resume_day:
            self.stdout.write(f"the audit chain is provable from the signed digest of {outcome.resume_day}: "
                              f"manage.py audit_verify --from-digest {outcome.resume_day}")
