"""`manage.py audit_digest build [--through DATE|today]` signs the digests of finished UTC days;
`manage.py audit_digest export [--out FILE]` writes them, with the public key, as JSON for auditors to keep."""
import datetime
import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit import digests, services


class Command(BaseCommand):
    help = "Build (sign) the daily audit digests, or export them with the public key."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        build = sub.add_parser("build", help="sign the digests of every finished day that has none")
        build.add_argument("--through", help="last day to digest (YYYY-MM-DD, or 'today' for the day so far); "
                                             "default yesterday (UTC)")
        export = sub.add_parser("export", help="all digests and the public key, as JSON")
        export.add_argument("--out", help="file to write (default: standard output)")

    def handle(self, *args, **options):
        if options["action"] == "build":
            through = options.get("through")
            if through == "today":
                through = timezone.now().astimezone(datetime.UTC).date()
            elif through:
                try:
                    through = datetime.date.fromisoformat(through)
                except ValueError:
                    raise CommandError("--through takes YYYY-MM-DD or 'today'") from None
            made = services.digests_build(through=through)
            for d in made:
                self.stdout.write(f"{d.day} seq {d.first_seq}..{d.last_seq} ({d.count} entries) "
                                  f"root {d.day_root} head {d.head_hash}")
            self.stdout.write(f"{len(made)} digest(s) signed")
            return
        text = json.dumps(digests.export(), indent=2)
        if options.get("out"):
            with open(options["out"], "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
            self.stdout.write(f"wrote {options['out']}")
        else:
            self.stdout.write(text)
