"""Sound devices through PortAudio (sounddevice): list, print and pick them.

    print(format_devices())                   # `antiphon devices`
    mic = find_device("USB", "input")         # index, exact name or case-insensitive part of it
    out = find_device(None, "output")         # the default output device

PortAudio is loaded on first use, not on import, so file-only commands run where it is missing.
It reads the device list once, when it is initialised: `rescan_devices()` reads it again (for
example after a JACK server started). `audio_io.streams` opens the devices picked here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from .errors import AudioDeviceError

Kind = Literal["input", "output"]
PICK_HINT = "pick a device by index or by name (`antiphon devices` lists them)"


def portaudio() -> ModuleType:
    """The sounddevice module; AudioDeviceError if the PortAudio library is not installed."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when it cannot load libportaudio
        raise AudioDeviceError(
            f"the PortAudio library cannot be loaded ({exc}); install it "
            "(Debian/Ubuntu: apt install libportaudio2; macOS and Windows wheels bundle it)"
        ) from exc
    return sounddevice


@dataclass(frozen=True)
class DeviceInfo:
    index: int  # PortAudio's device index: valid until PortAudio is re-initialised
    name: str
    host_api: str  # "ALSA", "JACK Audio Connection Kit", "Core Audio", "WASAPI", ...
    input_channels: int
    output_channels: int
    default_sample_rate: int  # streams open at this rate; JACK devices accept no other
    is_default_input: bool = False
    is_default_output: bool = False

    def channels(self, kind: Kind) -> int:
        return self.input_channels if kind == "input" else self.output_channels

    def describe(self) -> str:
        return f"[{self.index}] {self.name!r} ({self.host_api})"


def list_devices() -> list[DeviceInfo]:
    sd = portaudio()
    host_apis = sd.query_hostapis()
    default_input, default_output = (_default_index(sd, kind) for kind in ("input", "output"))
    return [
        DeviceInfo(
            index=index,
            name=info["name"],
            host_api=host_apis[info["hostapi"]]["name"],
            input_channels=info["max_input_channels"],
            output_channels=info["max_output_channels"],
            default_sample_rate=round(info["default_samplerate"]),
            is_default_input=index == default_input,
            is_default_output=index == default_output,
        )
        for index, info in enumerate(sd.query_devices())
    ]


def format_devices(devices: Sequence[DeviceInfo] | None = None) -> str:
    """A table for `antiphon devices`; `>` marks the default input, `<` the default output."""
    devices = list_devices() if devices is None else devices
    if not devices:
        return "no sound devices found (is a sound server running, or a device connected?)"
    name_width = max(4, *(len(d.name) for d in devices))
    api_width = max(8, *(len(d.host_api) for d in devices))
    lines = [f"    {'#':>3}  {'name':<{name_width}}  {'host API':<{api_width}}   in  out   rate"]
    for d in devices:
        mark = (">" if d.is_default_input else " ") + ("<" if d.is_default_output else " ")
        lines.append(
            f"{mark}  {d.index:>3}  {d.name:<{name_width}}  {d.host_api:<{api_width}}  "
            f"{d.input_channels:>3}  {d.output_channels:>3}  {d.default_sample_rate:>5}"
        )
    lines.append("> default input, < default output")
    return "\n".join(lines)


def find_device(spec: str | int | None, kind: Kind) -> DeviceInfo:
    """The device `spec` names: an index, an exact name or a case-insensitive part of a name.

    None picks the default device. Missing or ambiguous names raise AudioDeviceError listing the
    candidates; so does a machine with no device of this kind at all.
    """
    return pick_device(list_devices(), spec, kind)


def pick_device(devices: Sequence[DeviceInfo], spec: str | int | None, kind: Kind) -> DeviceInfo:
    """`find_device` on a given device list."""
    usable = [d for d in devices if d.channels(kind) > 0]
    what = "microphone or line in" if kind == "input" else "speaker or headphones"
    if not usable:
        seen = f"it sees {len(devices)} device(s), none with {kind} channels" if devices else ""
        raise AudioDeviceError(
            f"no sound {kind} device was found ({seen or 'PortAudio sees no devices at all'}); "
            f"connect a {what}, check that the sound server (PipeWire, PulseAudio or JACK) is "
            f"running, then {PICK_HINT}"
        )
    if spec is None:
        defaults = [
            d for d in usable if (d.is_default_input if kind == "input" else d.is_default_output)
        ]
        if not defaults:
            raise AudioDeviceError(
                f"there is no default {kind} device; {PICK_HINT}:\n{_listing(usable)}"
            )
        return defaults[0]
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        by_index = [d for d in devices if d.index == index]
        if not by_index:
            raise AudioDeviceError(
                f"there is no sound device {index}; {kind} devices are:\n{_listing(usable)}"
            )
        if by_index[0].channels(kind) == 0:
            raise AudioDeviceError(
                f"device {by_index[0].describe()} has no {kind} channels; {kind} devices are:\n"
                f"{_listing(usable)}"
            )
        return by_index[0]
    exact = [d for d in usable if d.name == spec]
    matches = exact or [d for d in usable if spec.strip().lower() in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AudioDeviceError(
            f"no {kind} device is named like {spec!r}; {kind} devices are:\n{_listing(usable)}"
        )
    raise AudioDeviceError(
        f"{spec!r} matches {len(matches)} {kind} devices; give its index or more of its name:\n"
        f"{_listing(matches)}"
    )


def rescan_devices() -> None:
    """Re-initialise PortAudio so it sees devices and sound servers that appeared since.

    Closes every open stream of this process first (Pa_Terminate does); indexes may change.
    """
    sd = portaudio()
    sd._terminate()
    sd._initialize()


def _default_index(sd: ModuleType, kind: Kind) -> int | None:
    try:
        return int(sd.query_devices(kind=kind)["index"])
    except sd.PortAudioError:  # PortAudio has no default device of this kind
        return None


def _listing(devices: Sequence[DeviceInfo]) -> str:
    return "\n".join(f"  {d.describe()}" for d in devices)


# --- streams: Microphone and Speaker --------------------------------------------------------------
