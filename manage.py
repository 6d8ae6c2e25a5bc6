#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal_project.settings")
    if sys.argv[1:2] == ["makemigrations"]:
        # Writing migrations signs nothing and serves nobody: let it run without the production secret
        # (settings refuse the development SECRET_KEY when DEBUG is off, for every other command).
        os.environ.setdefault("PORTAL_ALLOW_DEV_SECRET", "1")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
