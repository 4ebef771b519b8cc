"""audio_io's exceptions: what a user can cause with a file or a sound device.

Separate from `model.errors` because audio_io must stay importable without torch (importing the
`model` package imports torch). The CLI catches `AudioError` next to `model.errors.AntiphonError`.
Messages name the file or device and say what to do; raise them `from` the underlying cause.
"""


class AudioError(Exception):
    """Base class of every error audio_io raises on purpose."""


class AudioFileError(AudioError):
    """An audio file is missing, unreadable, empty or not audio (or cannot be written)."""


class AudioDeviceError(AudioError):
    """A sound device is missing, ambiguous, cannot be opened, or vanished while running."""
