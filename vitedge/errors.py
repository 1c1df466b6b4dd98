"""Failure classes and their exit codes (the CLI's and the Python API's contract).

Every error vitedge raises on purpose derives from :class:`VitedgeError`, whose ``exit_code`` the
CLI returns after a one-line message:

==== ========================== =====================================================================
code class                       meaning
==== ========================== =====================================================================
1    (``BudgetNotMetError``)    measured latency still over budget after the closed loop
2    :class:`BadInput`          bad input: a model, file, image folder, flag or budget that cannot work
3    :class:`MissingExtra`      a runtime package or extra is not installed (here or on the device)
4    :class:`DeviceFailure`     the device or the link to it failed (the message names the host)
5    :class:`ExportValidationError` an exported file failed its op audit or parity check
==== ========================== =====================================================================

``vitedge bench`` keeps its own codes (1 regression, 3 unstable); it returns 4 and 5 as above. Any
other exception is a bug: the CLI shows its traceback and asks for a report. :class:`BadInput` and
:class:`DeviceFailure` are also ``ValueError`` (callers that catch ``ValueError`` keep working).
"""
from __future__ import annotations


class VitedgeError(Exception):
    """Base of the errors vitedge raises on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class BadInput(VitedgeError, ValueError):
    """The input cannot work (exit 2); the message names the fix."""

    exit_code = 2


class MissingExtra(VitedgeError, RuntimeError):
    """A runtime package or an optional extra is not installed (exit 3); the message names the install."""

    exit_code = 3


class DeviceFailure(VitedgeError, ValueError):
    """The device, or the link to it, failed while it was in use (exit 4); the message names the host."""

    exit_code = 4


class ExportValidationError(VitedgeError, RuntimeError):
    """An exported model failed validation: forbidden ops, or outputs that differ from PyTorch (exit 5)."""

    exit_code = 5
