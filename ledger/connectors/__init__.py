"""ERP connectors: one class per ERP behind the interface of `base.Connector`."""
from ledger.connectors.base import AmbiguousError, Connector, PermanentError, PostResult, TransientError
from ledger.connectors.builtin import BuiltinConnector
from ledger.connectors.erpnext import ErpNextConnector

REGISTRY: dict[str, type[Connector]] = {c.name: c for c in (BuiltinConnector, ErpNextConnector)}


def get_connector(entity) -> Connector:
    try:
        return REGISTRY[entity.erp_connector](entity)
    except KeyError:
        raise PermanentError(f"unknown ERP connector {entity.erp_connector!r} for entity {entity.code}") from None


__all__ = ["AmbiguousError", "Connector", "PermanentError", "PostResult", "TransientError", "get_connector"]
