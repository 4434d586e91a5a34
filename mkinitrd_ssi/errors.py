"""The one error type of the admin commands, mapped to `prog: message` by cli.run_main."""

from __future__ import annotations


class SsiError(Exception):
    """A failure the user can act on: message says what, hint says what would be right."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
