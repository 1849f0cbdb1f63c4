"""`{{ amount|money:currency }}`: money on the pages, grouped and at the currency's minor-unit digits.

A builtin (settings TEMPLATES `builtins`), so every template has it without `{% load %}`. The one
formatting rule lives in `ledger.money.display`; CSV, JSON and the API keep plain digits.
"""
from django import template

from ledger.money import display

register = template.Library()


@register.filter(is_safe=True)
def money(amount, currency=None) -> str:
    return display(amount, currency or None)
