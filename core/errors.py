"""Errors that carry a message meant for the user (no traceback needed)."""


class DreamBoothError(Exception):
    """Base class: the message says what went wrong and what to do."""


class ConfigError(DreamBoothError):
    """A configuration value is missing, invalid or unsupported."""


class DataError(DreamBoothError):
    """Training images are missing or unusable."""


class ModelLoadError(DreamBoothError):
    """A model path or file cannot be loaded."""


class NonFiniteLossError(DreamBoothError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class StopRequested(DreamBoothError):
    """The user asked the job to stop (cancel button, Ctrl-C, stop file)."""


class OutOfMemory(DreamBoothError):
    """The device ran out of memory; the message lists the settings that save the most."""
