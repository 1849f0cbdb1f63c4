"""The connectors' HTTP sessions (ledger/connectors/http.py): the environment's proxy and CA settings are taken once,
when a session is made for an ERP's base URL, and nothing of the environment is read again per request."""
import requests

from ledger import connectors
from ledger.connectors import http
from tests.fixtures import erpnext_configure


def test_the_environments_proxy_is_taken_for_the_base_url_unless_bypassed(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
                 "all_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://egress.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/erp-ca.pem")
    session = http.environment_session("https://erp.example.com")
    assert session.trust_env is False
    assert session.proxies["https"] == "http://egress.example:3128"
    assert session.verify == "/etc/ssl/erp-ca.pem"
    monkeypatch.setenv("NO_PROXY", "erp.example.com")
    bypassed = http.environment_session("https://erp.example.com")
    assert "https" not in bypassed.proxies
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    assert bypassed.verify is True or http.environment_session("https://erp.example.com").verify is True


def test_a_post_reads_nothing_of_the_environment(entity, erp, monkeypatch):
    erpnext_configure(entity, erp)
    entity.refresh_from_db()
    connector = connectors.get_connector(entity)
    connector.request("GET", "/api/method/frappe.auth.get_logged_user", write=False)  # the session exists now

    def forbidden(*args, **kwargs):
        raise AssertionError("the environment was read for a request")

    monkeypatch.setattr(requests.sessions, "get_netrc_auth", forbidden)
    monkeypatch.setattr(requests.sessions, "get_environ_proxies", forbidden)
    response = connector.request("GET", "/api/method/frappe.auth.get_logged_user", write=False)
    assert response.status_code == 200
