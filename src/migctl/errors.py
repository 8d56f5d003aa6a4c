"""User-facing errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused operation: the message names what is wrong and what is valid."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
