"""What every connector's read-back shares: telling our reference from someone else's use of the same field,
mapping the ERP's account names back to our account codes, turning the ERP's JSON amounts into Decimal money
at the entity's currency, and summing ERP rows into `ErpMovement`s per account and month."""
import datetime
import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from config.money import ZERO, quantum
from ledger.connectors.base import ErpMovement
from ledger.models import Account

# Our references are journal and batch ids: UUIDs, written by us in canonical form (lower case, hyphens).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# The memo / remark every connector writes: "Tieout journal <id>: <description>".
_MEMO = re.compile(r"\s*Tieout journal (" + _UUID.pattern + r")\b")


def our_reference(value) -> str | None:
    """Our reference in canonical form when `value` is one, else None.

    The fields we post our reference in (ERPNext's Reference Number, Odoo's `ref`, NetSuite's external id)
    are ordinary fields people also fill in by hand (a bank reference, a supplier's number): only a value of
    our form is ours. A document carrying anything else is a manual entry, seen in the movements only.
    """
    if value is None or value is False:
        return None
    text = str(value).strip()
    return text.lower() if _UUID.fullmatch(text) else None


def memo_reference(memo) -> str | None:
    """Our reference from the memo we write ("Tieout journal <id>: ..."), for copies that lost the field."""
    match = _MEMO.match(str(memo or ""))
    return match.group(1).lower() if match else None


class AccountNames:
    """An entity's account codes and the ERP's names for them, both ways (`Account.erp_account`; empty means
    the ERP uses our code). Where two of our accounts name one ERP account, the lower code wins; an ERP account
    we do not know keeps the ERP's name."""

    def __init__(self, entity):
        rows = Account.objects.filter(entity=entity).order_by("code").values_list("code", "erp_account")
        self.to_erp = {code: (erp_account or "").strip() or code for code, erp_account in rows}
        self.to_ours: dict[str, str] = {}
        for code, erp_name in self.to_erp.items():
            self.to_ours.setdefault(erp_name, code)

    def ours(self, erp_name) -> str:
        name = str(erp_name)
        return self.to_ours.get(name, name)

    def erp(self, code: str) -> str:
        return self.to_erp.get(code, code)


def money(value, currency: str) -> Decimal:
    """An ERP amount (a JSON number, a numeric string, null/false) as Decimal at the currency's minor units.

    ERPs send money as JSON numbers; going through `str` keeps the shortest decimal form of the float (107.25,
    not 107.2499999...), and quantizing removes the noise a float sum can carry (300.15000000000003).
    """
    step = _quantum(currency)
    if value is None or value is False or value == "":
        return ZERO.quantize(step)
    try:
        return Decimal(str(value)).quantize(step, rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise ValueError(f"the ERP sent {value!r} as an amount") from None


@functools.cache
def _quantum(currency: str) -> Decimal:
    return quantum(currency)  # config.money's rounding step, computed once per currency (hot: every line)


def parse_date(value) -> datetime.date:
    return datetime.date.fromisoformat(str(value)[:10])


def movements(rows: Iterable[tuple[str, str, Decimal, Decimal]]) -> Iterator[ErpMovement]:
    """Sum (our account, month, debit, credit) rows per account and month, in account then month order."""
    totals: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for account, month, debit, credit in rows:
        total = totals[(account, month)]
        total[0] += debit
        total[1] += credit
    for (account, month), (debit, credit) in sorted(totals.items()):
        yield ErpMovement(account=account, month=month, debit=debit, credit=credit)
