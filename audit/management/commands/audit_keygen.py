"""`manage.py audit_keygen`: a new Ed25519 signing key for the audit digests; prints the value for
TIEOUT_AUDIT_SIGNING_KEY (keep it in the secret store, never in the repository) and the public key PEM
(give it to the auditors), and stores nothing."""
from django.core.management.base import BaseCommand

from audit import digests


class Command(BaseCommand):
    help = "Generate an Ed25519 key for signing audit digests (prints it; stores nothing)."

    def handle(self, *args, **options):
        seed, pem = digests.generate_key()
        self.stdout.write(f"TIEOUT_AUDIT_SIGNING_KEY={seed}")
        self.stdout.write(pem.rstrip())
