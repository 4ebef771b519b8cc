"""Picking a device: by index, name or part of it, the default; errors that list candidates.

The rules run on made-up device lists (the machines tests run on have no sound cards); listing
and finding run on a real JACK server too.
"""

import pytest

from audio_io.devices import DeviceInfo, find_device, format_devices, list_devices, pick_device
from audio_io.errors import AudioDeviceError
from tests.jack_server import JackServer, make_jack_fixture

jack_server = make_jack_fixture()

DEVICES = [
    DeviceInfo(0, "HDA Intel PCH: ALC892 Analog (hw:0,0)", "ALSA", 2, 2, 48000),
    DeviceInfo(1, "HDA Intel PCH: HDMI 0 (hw:0,3)", "ALSA", 0, 8, 48000),
    DeviceInfo(2, "USB Headset: Audio (hw:1,0)", "ALSA", 1, 2, 44100),
    DeviceInfo(3, "pulse", "ALSA", 32, 32, 44100),
    DeviceInfo(4, "default", "ALSA", 32, 32, 44100, is_default_input=True, is_default_output=True),
]


def test_default_device() -> None:
    assert pick_device(DEVICES, None, "input").name == "default"
    assert pick_device(DEVICES, None, "output").index == 4


@pytest.mark.parametrize(
    ("spec", "kind", "index"),
    [
        (2, "input", 2),
        ("2", "output", 2),
        ("pulse", "input", 3),
        ("usb", "input", 2),
        ("HDMI", "output", 1),
        ("default", "output", 4),
    ],
)
def test_by_index_or_name(spec: str | int, kind: str, index: int) -> None:
    assert pick_device(DEVICES, spec, kind).index == index  # type: ignore[arg-type]


def test_exact_name_wins_over_substrings() -> None:
    devices = [*DEVICES, DeviceInfo(5, "pulse monitor", "ALSA", 2, 0, 44100)]
    assert pick_device(devices, "pulse", "input").index == 3


def test_ambiguous_name_lists_the_candidates() -> None:
    with pytest.raises(AudioDeviceError, match="'HDA' matches 2 output devices") as error:
        pick_device(DEVICES, "HDA", "output")
    assert "[0] 'HDA Intel PCH: ALC892" in str(error.value) and "[1] 'HDA" in str(error.value)


def test_missing_name_lists_the_devices_of_that_kind() -> None:
    with pytest.raises(AudioDeviceError, match="no input device is named like 'Scarlett'") as error:
        pick_device(DEVICES, "Scarlett", "input")
    assert "[2] 'USB Headset" in str(error.value)
    assert "HDMI" not in str(error.value)  # output only: not a candidate for input


def test_index_without_channels_of_that_kind() -> None:
    with pytest.raises(AudioDeviceError, match=r"\[1\] 'HDA Intel PCH: HDMI .* has no input"):
        pick_device(DEVICES, 1, "input")
    with pytest.raises(AudioDeviceError, match="there is no sound device 9"):
        pick_device(DEVICES, 9, "output")


def test_no_device_at_all_says_how_to_get_one() -> None:
    with pytest.raises(AudioDeviceError, match="no sound input device was found") as error:
        pick_device([], None, "input")
    assert "antiphon devices" in str(error.value)
    only_output = [DeviceInfo(0, "HDMI", "ALSA", 0, 2, 48000, is_default_output=True)]
    with pytest.raises(AudioDeviceError, match="none with input channels"):
        pick_device(only_output, "HDMI", "input")


def test_no_default_device() -> None:
    devices = [DeviceInfo(0, "a", "ALSA", 2, 2, 48000)]
    with pytest.raises(AudioDeviceError, match=r"(?s)no default output device.*\[0\] 'a'"):
        pick_device(devices, None, "output")


def test_format_devices_table() -> None:
    table = format_devices(DEVICES).splitlines()
    assert table[0].split() == ["#", "name", "host", "API", "in", "out", "rate"]
    assert table[5].startswith("><") and "default" in table[5] and "44100" in table[5]
    assert table[2].split()[-3:] == ["0", "8", "48000"]
    assert "no sound devices" in format_devices([])


def test_jack_server_is_listed_and_found(jack_server: JackServer) -> None:
    devices = list_devices()
    jack = [d for d in devices if d.host_api == "JACK Audio Connection Kit"]
    assert [(d.name, d.input_channels, d.output_channels) for d in jack] == [("system", 2, 2)]
    assert jack[0].default_sample_rate == 24000
    assert find_device("system", "input") == jack[0]
    assert find_device("SYST", "output") == jack[0]
    assert find_device(jack[0].index, "output") == jack[0]
    assert find_device(None, "input") == jack[0]  # the only device, so the default
    assert "JACK Audio Connection Kit" in format_devices()
