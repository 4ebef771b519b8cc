"""antiphon audio I/O: sound devices, audio files, resampling, re-framing.

Never imports app, textual, aiomqtt or torch. `audio_io.devices` loads PortAudio (through
sounddevice) only when a device is listed or opened, so file-only commands work without it.
"""

from .errors import AudioDeviceError, AudioError, AudioFileError

__all__ = ["AudioDeviceError", "AudioError", "AudioFileError"]
