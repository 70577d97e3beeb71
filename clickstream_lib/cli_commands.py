"""Subcommands of ``clickstream`` beyond config/stack: generate, produce, consume, query, report, dashboard, demo.

Each block registers itself with :func:`clickstream_lib.cli.register`; handlers only call the library and present
its results (progress bars on a terminal, quiet when piped).
"""

from __future__ import annotations

import argparse

from .cli import err, out, register  # noqa: F401
from .settings import Settings  # noqa: F401

# --- generate / produce (events, generator, producer) -----------------------------------------------------------

# --- consume (the sink) -----------------------------------------------------------------------------------------

# --- query (named analytics queries, read-only SQL) --------------------------------------------------------------

# --- report / dashboard / demo (notebooks) ----------------------------------------------------------------------
