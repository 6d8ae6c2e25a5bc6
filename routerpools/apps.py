"""Managed router pools, their endpoints and sessions, and the public model aliases mapped onto them."""

from django.apps import AppConfig


class RouterpoolsConfig(AppConfig):
    name = "routerpools"
    default_auto_field = "django.db.models.BigAutoField"
