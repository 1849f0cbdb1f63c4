"""ERP connectors: one class per ERP behind the interface of `base.Connector`, chosen per entity."""
from django.utils.module_loading import import_string

from ledger.connectors.base import (AmbiguousError, Connector, ErpDocument, ErpLine, ErpMovement, PermanentError,
                                   PostResult, TransientError)

REGISTRY: dict[str, str] = {
    "builtin": "ledger.connectors.builtin.BuiltinConnector",
    "erpnext": "ledger.connectors.erpnext.ErpNextConnector",
    "odoo": "ledger.connectors.odoo.OdooConnector",
    "netsuite": "ledger.connectors.netsuite.NetSuiteConnector",
}


def connector_class(name: str) -> type[Connector]:
    try:
        return import_string(REGISTRY[name])
    except KeyError:
        raise PermanentError(f"unknown ERP connector {name!r}") from None


def get_connector(entity) -> Connector:
    return connector_class(entity.erp_connector)(entity)


__all__ = ["AmbiguousError", "Connector", "ErpDocument", "ErpLine", "ErpMovement", "PermanentError", "PostResult", "TransientError", "get_connector",
           "connector_class"]
