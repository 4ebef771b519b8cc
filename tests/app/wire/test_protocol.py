"""The MQTT protocol offline: audio frames, commands, sampling, topics; the broker options."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest

from app.wire.mqtt import add_broker_arguments, broker_from_args
from app.wire.protocol import (
    AUDIO_HEADER,
    AudioFrame,
    ProtocolError,
    SampleFormat,
    Topics,
    decode_audio,
    encode_audio,
    parse_command,
    parse_sampling,
)
from model import SamplingParams
from model.errors import ConfigError

FRAME = 1920


def test_audio_frame_layout_and_round_trip() -> None:
    pcm = np.linspace(-1, 1, FRAME, dtype=np.float32)
    payload = encode_audio(AudioFrame(7, pcm, SampleFormat.S16, node_us=1234))
    assert AUDIO_HEADER.size == 28 and len(payload) == 28 + 2 * FRAME
    assert payload[:4] == b"AP\x01\x01"  # magic, version 1, format 1 = s16
    assert int.from_bytes(payload[4:8], "little") == 7
    assert int.from_bytes(payload[8:10], "little") == FRAME
    assert int.from_bytes(payload[12:16], "little") == 1234
    back = decode_audio(payload, FRAME)
    assert back.sequence == 7 and back.node_us == 1234
    assert np.abs(back.pcm - pcm).max() <= 1 / 32768
    exact = decode_audio(encode_audio(AudioFrame(1, pcm, SampleFormat.F32)), FRAME)
    np.testing.assert_array_equal(exact.pcm, pcm)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "bad_frame"),
        (b"XX" + bytes(26 + 2 * FRAME), "bad_frame"),  # wrong magic
        (encode_audio(AudioFrame(0, np.zeros(FRAME - 1), SampleFormat.S16)), "bad_frame"),
        (encode_audio(AudioFrame(0, np.zeros(FRAME)))[:-2], "bad_frame"),  # truncated
        (b"AP\x01\x09" + bytes(24 + 2 * FRAME), "bad_frame"),  # unknown sample format
        (encode_audio(AudioFrame(0, np.full(FRAME, np.nan), SampleFormat.F32)), "bad_frame"),
        (bytes(100_000), "too_large"),
    ],
)
def test_bad_frames_are_refused(payload: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_audio(payload, FRAME)
    assert refused.value.code == code


def test_commands_sampling_and_topics_are_checked() -> None:
    assert parse_command({"cmd": "mute", "muted": False}).muted is False
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cmd": "explode"}, "unknown_command"),
        ({"cmd": "mute", "muted": "yes"}, "bad_request"),
    ]
    for bad, code in cases:
        with pytest.raises(ProtocolError) as refused:
            parse_command(bad)
        assert refused.value.code == code
    base = SamplingParams()
    assert parse_sampling({"seed": 5, "text_top_k": 3}, base).seed == 5
    wrong: list[dict[str, Any]] = [{"seed": -1}, {"seed": 1.5}, {"text_temperature": True}]
    for fields in [*wrong, {"nope": 1}]:
        with pytest.raises(ProtocolError):
            parse_sampling(fields, base)
    topics = Topics("antiphon", "n1")
    assert topics.parse_session_topic("antiphon/n1/session/bob/xyz/ctl") == ("bob", "xyz", "ctl")
    assert topics.parse_session_topic("antiphon/n1/session/bob/xyz/out/audio") is None
    assert topics.check_reply_topic("antiphon/reply/bob/1", "bob") == "antiphon/reply/bob/1"
    for bad_topic in ["antiphon/reply/alice/1", "antiphon/n1/status", "antiphon/reply/bob/"]:
        with pytest.raises(ProtocolError):
            topics.check_reply_topic(bad_topic, "bob")
    with pytest.raises(ProtocolError):
        Topics("antiphon", "a/b")


def test_broker_options() -> None:
    parser = argparse.ArgumentParser()
    add_broker_arguments(parser, "--broker", host_and_port=True)
    settings = broker_from_args(parser.parse_args(["--broker", "mqtts://gpu.example"]), "--broker")
    assert (settings.host, settings.port, settings.tls) == ("gpu.example", 8883, True)
    settings = broker_from_args(parser.parse_args(["--host", "h", "--port", "1884"]), "--broker")
    assert (settings.host, settings.port, settings.tls) == ("h", 1884, False)
    for wrong in (["--broker", "http://x"], ["--broker", "mqtt://u:p@x"], ["--tls-cert", "c"]):
        with pytest.raises(ConfigError):
            broker_from_args(parser.parse_args(wrong), "--broker")
