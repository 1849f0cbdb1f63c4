"""Test settings: real PostgreSQL and Redis; Celery eager unless a test starts a real worker."""
import os

from .base import *  # noqa: F401,F403
from .base import env_bool

DEBUG = False
SECRET_KEY = "test-only-not-secret"
ALLOWED_HOSTS = ["*"]
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", True)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES["default"]["KEY_PREFIX"] = f"tieout-test-{os.getpid()}"  # noqa: F405
TIEOUT_TOKEN_CACHE_SECONDS = 0.0
# Read-back retries wait milliseconds in tests (the stand-ins answer 429 with Retry-After: 1).
TIEOUT_READBACK_BACKOFF_BASE = 0.002
TIEOUT_READBACK_RETRY_AFTER_CAP = 0.01
# 2FA is off in tests unless a test turns it on (settings.TIEOUT_2FA = True), as the product card allows.
TIEOUT_2FA = env_bool("TIEOUT_2FA", False)
LOG_LEVEL = os.environ.get("LOG_LEVEL", "WARNING")
from config.logging import build_logging  # noqa: E402

LOGGING = build_logging(LOG_LEVEL, False)

# One test database per test run (pid), so that concurrent runs on one server never clobber each other.
DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}  # noqa: F405
