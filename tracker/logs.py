"""Structured logging: one line per event, ``key=value`` pairs after a fixed prefix."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "info", *, process: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s level=%(levelname)s process={process} logger=%(name)s %(message)s",
        force=True,
    )
    # Faust and mode narrate every service start and stop at INFO; aiokafka logs each refused
    # connection at ERROR while a broker restarts. Keep their warnings, not their chatter.
    quiet = max(logging.WARNING, logging.getLogger().level)
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(quiet)
