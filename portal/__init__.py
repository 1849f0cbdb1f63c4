"""The read side and the staff portal (layer 5): lineage and trace, evidence packs, the dashboard and
/metrics, the staff web UI, and sign-in, 2FA and users. It reads through every app below it and writes only
through their services (and its own `portal.auth_services`); nothing imports it but the URL confs
(config/urls.py) and the settings' dotted paths (middleware, context processor, template builtin, django-axes'
lockout page)."""
