"""Staff views of pools, endpoints, sessions and aliases; router auth keys are write-only here."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin

from routerpools.models import ModelAlias, RouterEndpoint, RouterPool, RouterSession


class WriteOnlyAuthKeyForm(forms.ModelForm):
    """Never renders the stored key; a blank field keeps it, `clear` removes it."""

    auth_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current key.",
    )
    clear_auth_key = forms.BooleanField(required=False, label="Clear the auth key")

    def save(self, commit: bool = True) -> Any:
        obj = super().save(commit=False)
        new_key = self.cleaned_data.get("auth_key") or ""
        if self.cleaned_data.get("clear_auth_key"):
            obj.auth_key = ""
        elif new_key:
            obj.auth_key = new_key
        elif obj.pk:
            obj.auth_key = type(obj).objects.filter(pk=obj.pk).values_list("auth_key", flat=True).first() or ""
        if commit:
            obj.save()
        return obj


class EndpointForm(WriteOnlyAuthKeyForm):
    base_url = forms.URLField(max_length=500, assume_scheme="http", help_text="e.g. http://10.0.0.5:5010")

    class Meta:
        model = RouterEndpoint
        fields = ["pool", "base_url", "auth_key", "weight", "enabled"]


class SessionForm(WriteOnlyAuthKeyForm):
    class Meta:
        model = RouterSession
        fields = ["pool", "session_id", "auth_key", "enabled"]


class EndpointInline(admin.TabularInline):
    model = RouterEndpoint
    form = EndpointForm
    extra = 0


class SessionInline(admin.TabularInline):
    model = RouterSession
    form = SessionForm
    extra = 0


def _has_key(obj: Any) -> bool:
    return bool(obj.auth_key)


@admin.register(RouterPool)
class RouterPoolAdmin(admin.ModelAdmin):
    list_display = ["name", "enabled", "draining", "env_managed"]
    list_editable = ["enabled", "draining"]
    inlines = [EndpointInline, SessionInline]


@admin.register(RouterEndpoint)
class RouterEndpointAdmin(admin.ModelAdmin):
    form = EndpointForm
    list_display = ["base_url", "pool", "weight", "enabled", "has_auth_key"]

    @admin.display(boolean=True, description="auth key set")
    def has_auth_key(self, obj: RouterEndpoint) -> bool:
        return _has_key(obj)


@admin.register(RouterSession)
class RouterSessionAdmin(admin.ModelAdmin):
    form = SessionForm
    list_display = ["session_id", "pool", "enabled", "has_auth_key"]

    @admin.display(boolean=True, description="auth key set")
    def has_auth_key(self, obj: RouterSession) -> bool:
        return _has_key(obj)


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    list_display = [
        "alias",
        "display_name",
        "pool",
        "prompt_format",
        "max_tokens_cap",
        "context_length",
        "upstream_timeout_s",
        "enabled",
        "env_managed",
    ]
    list_filter = ["enabled", "pool"]
    list_editable = ["enabled"]
