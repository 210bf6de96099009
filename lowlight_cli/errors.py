"""The LowlightError tree: each error knows its exit code and, where useful, a hint."""

from __future__ import annotations

from lowlight_cli.constants import ExitCode


class LowlightError(Exception):
    """Base class: a failure the user can understand and act on.

    Args:
        message: what failed, in one line.
        hint: what to do about it (optional).
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(LowlightError):
    """Bad option, unknown model, incompatible flags."""

    exit_code = ExitCode.USAGE


class ImageError(LowlightError):
    """An image could not be read or written."""

    exit_code = ExitCode.IMAGE


class WeightsError(LowlightError):
    """Weights missing, download failed, checksum mismatch, bad manifest."""

    exit_code = ExitCode.WEIGHTS


class NoDefaultWeightsError(WeightsError):
    """A model asked for without ``--weights`` has no default weights in the manifest."""


class ResourceError(LowlightError):
    """Out of memory, or a precision/device the model or machine cannot do."""

    exit_code = ExitCode.RESOURCE


class BatchFailedError(LowlightError):
    """A batch finished, but some files failed."""

    exit_code = ExitCode.BATCH_FAILED


class BackendUnavailableError(UsageError):
    """An optional backend (onnxruntime) is not installed."""
