"""Responses stored by `/v1/responses` (`store`), so a conversation continues from a previous response's id."""

from django.apps import AppConfig


class ResponsestoreConfig(AppConfig):
    name = "responsestore"
    default_auto_field = "django.db.models.BigAutoField"
