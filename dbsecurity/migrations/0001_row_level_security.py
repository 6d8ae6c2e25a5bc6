"""Row-level security, no policy, on every table the apps have at this point (dbsecurity/rls.py); tables created
later get it from the post_migrate hook (dbsecurity/apps.py). PostgreSQL only: nothing on SQLite."""

from __future__ import annotations

from django.db import migrations


def enable(apps, schema_editor) -> None:  # noqa: ANN001
    from dbsecurity.rls import enable_row_level_security

    enable_row_level_security(schema_editor.connection)


class Migration(migrations.Migration):
    # After every app's migrations as they stand today, so that it sees their tables on a fresh database. Fixed
    # names, not __latest__: an app's later migration must not become a dependency of this applied one.
    dependencies = [
        ("account", "0009_emailaddress_unique_primary_email"),
        ("accounts", "0004_membership_audit_invitation_declined"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("apikeys", "0002_alter_apikey_external_id"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("billing", "0005_modelaccessoverride"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("gateway", "0002_epoch_row"),
        ("mfa", "0003_authenticator_type_uniq"),
        ("responsestore", "0001_initial"),
        ("routerpools", "0003_modelalias_cap_is_the_default"),
        ("sessions", "0001_initial"),
        ("sites", "0002_alter_domain_unique"),
        ("usage", "0003_usageevent_end_user"),
        ("usersessions", "0001_initial"),
    ]

    # Disabling it again is not a reversal anyone should run by accident: reversing leaves it on.
    operations = [migrations.RunPython(enable, migrations.RunPython.noop, elidable=False)]
