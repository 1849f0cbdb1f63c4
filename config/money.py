"""Money rules: Decimal only, at most the currency's ISO 4217 minor-unit digits. The table lists the
currencies whose minor unit is not 2; every other ISO code uses 2. An unknown code is still refused by the
format check (three upper-case letters) but not by name, because billing platforms add currencies faster
than we would update a list."""
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

ZERO = Decimal("0")

_MINOR_UNITS = {
    # 0 digits
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0, "RWF": 0,
    "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    # 3 digits
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    # 4 digits
    "CLF": 4, "UYW": 4,
}


def minor_units(currency: str) -> int:
    return _MINOR_UNITS.get(currency, 2)


def quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_units(currency))


def quantize(amount: Decimal, currency: str) -> Decimal:
    return amount.quantize(quantum(currency), rounding=ROUND_HALF_UP)


# Digits, an optional sign and fraction: no exponent, no NaN/Infinity, no underscores or spaces.
_PLAIN_DECIMAL = re.compile(r"-?(\d{1,15})(?:\.(\d+))?")


def parse_money(value, currency: str | None) -> Decimal:
    """Parse a decimal string; refuse floats, exponents, NaN and more digits than the currency has."""
    if not isinstance(value, str):
        raise ValueError("must be a decimal string such as \"107.25\"")
    match = _PLAIN_DECIMAL.fullmatch(value)
    if match is None:
        if re.fullmatch(r"-?\d{16,}(?:\.\d+)?", value):
            raise ValueError("is too large")
        raise ValueError("must be a plain decimal string such as \"107.25\"")
    fraction = match.group(2) or ""
    if currency is not None and len(fraction) > minor_units(currency):
        raise ValueError(f"has more than {minor_units(currency)} decimal places for {currency}")
    try:
        return Decimal(value)
    except InvalidOperation:  # unreachable after the pattern, kept as a guard
        raise ValueError("is not a decimal number") from None


def parse_money_input(value, currency: str) -> Decimal | None:
    """A person's money input (a form or an API field): None when blank, else `parse_money`'s rules.

    A Decimal (from a form field) is taken as its plain digits, so the same minor-unit check applies.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Decimal):
        value = format(value, "f")
    return parse_money(value.strip() if isinstance(value, str) else value, currency)


def fmt(amount: Decimal | None, currency: str) -> str | None:
    """The API's money string: exactly the currency's minor-unit digits."""
    if amount is None:
        return None
    return str(quantize(Decimal(amount), currency))


def display(amount, currency: str | None = None) -> str:
    """Money for people: thousands grouped with commas, the currency's minor-unit digits, a leading minus.

    `16087.5` in USD is `16,087.50`, in JPY `16,088`, in KWD `16,087.500`; `-1234.5` is `-1,234.50`.
    Without a currency the amount keeps its own digits. Accepts a Decimal, an int or the API's money
    string (`fmt`'s output); None and "" give "" and anything that is not a number is returned as is.
    Only for pages: CSV, JSON and the API keep `fmt`'s plain digits, which machines read.
    """
    if amount is None or (isinstance(amount, str) and not amount.strip()):
        return ""
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount).strip())
    except (InvalidOperation, ValueError):
        return str(amount)
    if not value.is_finite():
        return str(amount)
    if currency:
        value = quantize(value, currency)
    text = f"{abs(value):,f}"
    return f"-{text}" if value < 0 else text
