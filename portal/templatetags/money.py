"""`{{ amount|money:currency }}`: money on the pages, grouped and at the currency's minor-unit digits. A
builtin (settings TEMPLATES `builtins`), so no `{% load %}` is needed; the one formatting rule lives in
`config.money.display`, while CSV, JSON and the API keep plain digits."""
import re

from django import template

from config.money import display

register = template.Library()


@register.filter(is_safe=True)
def money(amount, currency=None) -> str:
    return display(amount, currency or None)


_DECIMAL_TEXT = re.compile(r"^-?\d+\.\d+$")


@register.filter(is_safe=True)
def money_text(value, currency=None) -> str:
    """A version diff's value: amounts (decimal text, as the history stores them) as money, the rest as is."""
    if isinstance(value, str) and _DECIMAL_TEXT.match(value):
        return display(value, currency or None)
    return value
