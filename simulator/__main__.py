"""`python -m simulator`: run the router simulator in the foreground (flags: `python -m simulator --help`)."""

from __future__ import annotations

import sys

from simulator.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
