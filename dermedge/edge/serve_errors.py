"""The one error of `edge-classify --serve`: a configuration the server refuses, in one line."""

from __future__ import annotations

import click


class ServeError(click.ClickException, ValueError):
    """A configuration the server refuses; the message is one line meant for the user.

    Raised inside a click command, click prints it as "Error: ..." and exits 2.
    """

    exit_code = 2
