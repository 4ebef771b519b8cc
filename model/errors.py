"""Project exceptions: what a user can cause (a bad file, a wrong checkpoint, bad input).

`assert` stays for internal invariants; these carry a message that says what to do, and are raised
with `raise ... from exc` so the underlying cause stays visible.
"""


class AntiphonError(Exception):
    """Base class of every error antiphon raises on purpose."""


class CheckpointError(AntiphonError):
    """A model file (weights, tokenizer, config.json) is missing, unreadable or does not match."""


class ConfigError(AntiphonError, ValueError):
    """A configuration is invalid or inconsistent."""


class AudioInputError(AntiphonError):
    """Audio input (a file or a device) cannot be read or has an unusable format."""
