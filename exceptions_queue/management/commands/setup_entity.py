"""`manage.py setup_entity CODE --currency USD [--name ...] [--erp builtin|erpnext|odoo|netsuite ...]`:
idempotent; creates the entity with the default chart, posting-rule mappings and approval policy, and
(re)configures its ERP connection. Secrets are never passed here: `--erp-token-env VAR` names the environment
variable that holds them. The last line printed is the entity code."""
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from config import correlation
from config.errors import TieoutError
from exceptions_queue import services as queue
from ledger import services

ACTOR = "cli:setup_entity"
OPTION_SETTINGS = {  # command-line option -> key in Entity.erp_settings
    "erp_url": "url", "erp_company": "company", "erp_token_env": "token_env", "erp_database": "database",
    "erp_api": "api", "erp_username": "username", "erp_account_id": "account_id",
    "erp_subsidiary": "subsidiary", "erp_cost_center": "cost_center", "erp_journal": "journal_id",
}


class Command(BaseCommand):
    help = "Create a legal entity with the default chart of accounts, posting-rule mappings and approval policy."

    def add_arguments(self, parser):
        parser.add_argument("code")
        parser.add_argument("--currency", required=True)
        parser.add_argument("--name")
        parser.add_argument("--erp", default=None, help="builtin (default), erpnext, odoo or netsuite")
        parser.add_argument("--erp-url")
        parser.add_argument("--erp-company", help="ERPNext company")
        parser.add_argument("--erp-token-env", help="Environment variable holding the ERP credential")
        parser.add_argument("--erp-database", help="Odoo database")
        parser.add_argument("--erp-api", help="Odoo API: json2 (Odoo 19+) or jsonrpc")
        parser.add_argument("--erp-username", help="Odoo login for JSON-RPC")
        parser.add_argument("--erp-account-id", help="NetSuite account id")
        parser.add_argument("--erp-subsidiary", help="NetSuite subsidiary id")
        parser.add_argument("--erp-cost-center", help="ERPNext cost center")
        parser.add_argument("--erp-journal", help="Odoo journal id")
        parser.add_argument("--erp-setting", action="append", default=[], metavar="KEY=VALUE",
                            help="Any other connector setting (repeatable)")
        parser.add_argument("--posting-mode", choices=["single", "batch"])

    def handle(self, *args, code, currency, name, erp, posting_mode, erp_setting, **options):
        erp_settings = {key: options[opt] for opt, key in OPTION_SETTINGS.items() if options.get(opt)}
        for item in erp_setting:
            if "=" not in item:
                raise CommandError(f"--erp-setting takes KEY=VALUE, not {item!r}")
            key, value = item.split("=", 1)
            erp_settings[key.strip()] = value.strip()
        with correlation.bound(None), transaction.atomic():
            try:
                entity, created = services.entity_setup(code=code, currency=currency, name=name,
                                                        erp=erp or "builtin", actor=ACTOR)
                queue.approval_policy_ensure(entity=entity, actor=ACTOR)
                if erp and (erp != entity.erp_connector or erp_settings or posting_mode):
                    entity = services.entity_configure_erp(entity=entity, connector=erp, erp_settings=erp_settings,
                                                           posting_mode=posting_mode, actor=ACTOR)
            except TieoutError as exc:
                raise CommandError(exc.detail) from None
        self.stdout.write(f"{'created' if created else 'exists'} {entity.code} {entity.currency} "
                          f"erp={entity.erp_connector}")
        self.stdout.write(entity.code)
