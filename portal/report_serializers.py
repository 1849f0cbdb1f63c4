"""The report responses, typed for the OpenAPI schema (drf-spectacular): AR aging, unapplied cash and the
customer statement. `portal.selectors.reports` writes the bodies (money as decimal text, dates ISO 8601);
these serializers declare their shape once and pass values through unchanged. Component names end in
`Report` or `Statement`, clear of the API's other components."""
from rest_framework import serializers

from portal.selectors.reports import BUCKETS
from portal.serializers import Day, Id, Money

# The bucket names ("1-30", ...) are not Python names: the serializer is built with them as keys.
AgingBucketsReport = type("AgingBucketsReport", (serializers.Serializer,), {
    "__doc__": "The amount in each age bucket (current: not yet due or received today; then days).",
    **{name: Money() for name in BUCKETS},
})


class AgingCustomerReport(serializers.Serializer):
    id = serializers.CharField(help_text="the customer's id in its source system")
    source_system = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    buckets = AgingBucketsReport()
    total = Money()


class ArAgingDifferenceReport(serializers.Serializer):
    without_invoice = Money(help_text="lines on the receivable account that carry no invoice id")
    unknown_invoices = Money(help_text="lines carrying an invoice id that billing does not know in this entity")


class ArAgingReport(serializers.Serializer):
    entity = serializers.CharField()
    as_of = Day()
    currency = serializers.CharField()
    account = serializers.CharField(help_text="the receivable (AR control) account's code")
    buckets = AgingBucketsReport()
    total = Money()
    ar_control_balance = Money(help_text="the receivable account's balance at as_of (posted journals)")
    ties_out = serializers.BooleanField()
    difference = Money(help_text="ar_control_balance minus total")
    difference_detail = ArAgingDifferenceReport()
    customers = AgingCustomerReport(many=True)


class UnappliedCashDifferenceReport(serializers.Serializer):
    without_payment = Money(help_text="lines on the unapplied cash account that carry no payment id")
    unknown_payments = Money(help_text="lines carrying a payment id that billing does not know in this entity")


class UnappliedCashReport(serializers.Serializer):
    entity = serializers.CharField()
    as_of = Day()
    currency = serializers.CharField()
    account = serializers.CharField(help_text="the unapplied cash account's code")
    buckets = AgingBucketsReport()
    total = Money()
    unapplied_cash_balance = Money(help_text="the unapplied cash account's credit balance at as_of")
    ties_out = serializers.BooleanField()
    difference = Money(help_text="unapplied_cash_balance minus total")
    difference_detail = UnappliedCashDifferenceReport()
    customers = AgingCustomerReport(many=True)


class StatementLineStatement(serializers.Serializer):
    date = Day()
    type = serializers.CharField(help_text="invoice, invoice reversal, payment, refund, credit note, write-off")
    document_type = serializers.CharField()
    document = serializers.CharField()
    number = serializers.CharField(allow_null=True, help_text="the invoice number, for invoices")
    invoice_id = serializers.CharField(allow_null=True, help_text="the one invoice the line concerns, if one")
    journal = Id()
    erp_document_ref = serializers.CharField(allow_null=True)
    debit = Money()
    credit = Money()
    balance = Money(help_text="the running balance after this line")


# `from` is a Python keyword: the statement is built with its fields as keys, in the body's order.
CustomerStatement = type("CustomerStatement", (serializers.Serializer,), {
    "__doc__": "A customer's statement of account over a period, with a running balance.",
    "source_system": serializers.CharField(),
    "customer_id": serializers.CharField(),
    "name": serializers.CharField(allow_blank=True),
    "entity": serializers.CharField(),
    "currency": serializers.CharField(),
    "from": Day(),
    "to": Day(),
    "opening_balance": Money(help_text="what the journals dated before `from` left"),
    "lines": StatementLineStatement(many=True),
    "total_debit": Money(),
    "total_credit": Money(),
    "closing_balance": Money(help_text="the receivable less the unapplied cash of the customer at `to`"),
})
