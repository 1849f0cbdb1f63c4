"""`manage.py audit_verify`: seal what is pending, then verify the whole chain; exit 1 naming the first bad entry."""
import sys

from django.core.management.base import BaseCommand

from audit import services


class Command(BaseCommand):
    help = "Verify the audit hash chain. Prints 'OK <n> entries' or names the first bad entry (exit 1)."

    def handle(self, *args, **options):
        services.seal(full_scan=True)
        result = services.verify()
        if result.ok:
            self.stdout.write(f"OK {result.count} entries")
            return
        self.stdout.write(f"FAIL entry {result.bad_entry_id}: {result.problem}")
        sys.exit(1)
