"""`manage.py audit_proof inclusion ENTRY_ID [--digest DAY]` and `manage.py audit_proof consistency --from
DAY --to DAY`: RFC 6962 / 9162 proofs as JSON, that an entry is leaf seq-1 of the tree whose root a digest
signs, or that an older digest's tree is a prefix of a newer one's (nothing before it changed); both check
with any RFC 9162 verifier, or with the evidence pack's verify_evidence.py."""
import json

from django.core.management.base import BaseCommand, CommandError

from audit import digests
from audit.models import AuditSeal


class Command(BaseCommand):
    help = "Print an inclusion or a consistency proof against the signed digests, as JSON."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="kind", required=True)
        inclusion = sub.add_parser("inclusion")
        inclusion.add_argument("entry_id", type=int)
        inclusion.add_argument("--digest", help="the digest (day or id); default the first that covers the entry")
        consistency = sub.add_parser("consistency")
        consistency.add_argument("--from", dest="old", required=True, help="older digest (day or id)")
        consistency.add_argument("--to", dest="new", required=True, help="newer digest (day or id)")

    def handle(self, *args, **options):
        try:
            if options["kind"] == "inclusion":
                digest = digests.digest_find(options["digest"]) if options.get("digest") else None
                proof = digests.inclusion_proof(entry_id=options["entry_id"], digest=digest)
            else:
                proof = digests.consistency_proof(old=digests.digest_find(options["old"]),
                                                  new=digests.digest_find(options["new"]))
        except (ValueError, AuditSeal.DoesNotExist) as exc:
            raise CommandError(str(exc) or "that entry is not sealed yet") from None
        proof["public_key_pem"] = digests.public_key_pem()
        self.stdout.write(json.dumps(proof, indent=2))
