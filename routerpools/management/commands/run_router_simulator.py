"""Run the Cortensor router simulator in the foreground (a thin door onto the simulator package)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from simulator.cli import add_cli_arguments, config_from_options, serve


class Command(BaseCommand):
    help = "Run a local Cortensor router simulator (aiohttp) for demos and tests."

    # The simulator touches no database, so skip Django's system checks to start fast.
    requires_system_checks = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_cli_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = config_from_options(options)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        def announce(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        serve(config, options["host"], options["port"], announce=announce)
