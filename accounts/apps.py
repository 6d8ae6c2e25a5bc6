"""Users, organizations and memberships; the admin site staff reach through allauth."""

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"


class PortalAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with accounts.admin_site.PortalAdminSite as `admin.site` (named in INSTALLED_APPS)."""

    default = False  # "accounts" alone still means AccountsConfig
    default_site = "accounts.admin_site.PortalAdminSite"
