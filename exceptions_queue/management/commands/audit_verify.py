"""`manage.py audit_verify [--from-digest DAY|ID] [--roots] [--record]`: seal what is pending, then verify the
audit chain; print `OK <n> entries`, or exit 1 naming the first bad entry. It checks the audit tables'
database guarantees, every entry hash, the chain links, the order, entries inserted into the past, and
every signed daily digest met on the way (signature, count, the signed chain heads); `--roots` also
re-computes each digest's Merkle roots from the entry hashes (about half the speed); `--record` runs it as
the scheduled daily full check does (the thorough pass, roots included), stores the run and opens the
audit_chain_broken alarm on failure, which is why this command lives with the queue and not in `audit`.
"""
import sys
import time

from django.core.management.base import BaseCommand, CommandError

from audit import digests
from audit import services as audit
from exceptions_queue import services as queue


class Command(BaseCommand):
    help = "Verify the audit hash chain. Prints 'OK <n> entries' or names the first bad entry (exit 1)."

    def add_arguments(self, parser):
        parser.add_argument("--from-digest", help="start at this signed digest (its day or id)")
        parser.add_argument("--roots", action="store_true",
                            help="also re-compute every signed digest's Merkle roots (day and whole tree)")
        parser.add_argument("--record", action="store_true",
                            help="record the run and raise the alarm on failure, like the scheduled check")

    def handle(self, *args, **options):
        audit.chain_seal()
        started = time.monotonic()
        if options["record"]:
            check = audit.chain_check(full=True)
            queue.exception_open_for_audit_check(check=check, actor="system")
            result = audit.VerifyResult(check.ok, check.checked, check.problem, check.bad_entry_id)
        elif options["from_digest"]:
            try:
                digest = digests.digest_find(options["from_digest"])
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            result = audit.chain_verify(from_digest=digest, roots=options["roots"])
        else:
            result = audit.chain_verify(roots=options["roots"])
        elapsed = time.monotonic() - started
        if result.ok:
            self.stderr.write(f"verified {result.count} entries and {result.digests_checked} digests "
                              f"in {elapsed:.2f} s")
            self.stdout.write(f"OK {result.count} entries")
            return
        self.stdout.write(f"FAIL entry {result.bad_entry_id}: {result.problem}")
        sys.exit(1)
