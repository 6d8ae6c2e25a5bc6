"""What every page may say about mail: where to write for help, and whether mail goes to the terminal (make run)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def mail_goes_to_terminal() -> bool:
    return settings.EMAIL_BACKEND == "django.core.mail.backends.console.EmailBackend"


def mail(request: HttpRequest) -> dict[str, object]:
    return {"support_email": settings.PORTAL_SUPPORT_EMAIL, "mail_to_terminal": mail_goes_to_terminal()}
