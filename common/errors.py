"""The project's exceptions, in one place.

Every message says what was wrong, the offending value, and what to do about it, so
that a user never has to read a traceback from deep inside a library.
"""

from __future__ import annotations


class FedistillError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(FedistillError, ValueError):
    """A configuration key or value is invalid (raised before anything starts)."""


class DataError(FedistillError, ValueError):
    """A dataset, file, split or partition cannot be used as asked."""


class ModelError(FedistillError, ValueError):
    """A model cannot be built or used as asked."""


class KnowledgeError(FedistillError, ValueError):
    """Encoded soft labels (knowledge) failed validation; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BudgetExceededError(FedistillError):
    """A planned DP step would push a client's ε past its budget."""


class LedgerError(FedistillError):
    """A privacy ledger is missing, malformed, torn or tampered with.

    ``line`` is the 1-based line of the first bad record when it is known (record index
    = line - 1), so an auditor's report can point at it without parsing the message.
    """

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class CryptoError(FedistillError):
    """A key file is missing, malformed, of the wrong type, or readable by others."""


class PrivacyMismatchError(FedistillError):
    """What DP-SGD ran differs from the event recorded in the ledger: ε would be wrong."""


class PolicyRefusal(FedistillError):
    """A node's privacy policy forbids what a round asks for; ``code`` says which rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
