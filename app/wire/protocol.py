"""The MQTT protocol between `antiphon serve` and its clients: topics, payloads, validation.

Pure data and bytes (no network), shared by the server and the remote terminal; docs/protocol.md
describes the same things for implementers in other languages. Everything a client sends is
decoded here and either returns a valid value or raises `ProtocolError` with a stable `code`:
the server turns that into an error event and goes on.

Topic tree (prefix "antiphon", node "gpu-1", owner "alice", session id "Xb3...", all one level
each except the prefix, which may have several):

    antiphon/requests                                    fleet requests (shared subscription)
    antiphon/gpu-1/requests                              requests for this node only
    antiphon/reply/alice/<anything>                      replies to alice's requests
    antiphon/gpu-1/status | info | metrics | errors      the node's own topics
    antiphon/gpu-1/session/alice/Xb3.../in/audio         client -> node, audio frames
    antiphon/gpu-1/session/alice/Xb3.../ctl              client -> node, commands (JSON)
    antiphon/gpu-1/session/alice/Xb3.../out/audio        node -> client, audio frames
    antiphon/gpu-1/session/alice/Xb3.../out/text         node -> client, TextEvent / HeardEvent JSON
    antiphon/gpu-1/session/alice/Xb3.../out/event        node -> client, state and error JSON
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from model import SamplingParams
from model.errors import AntiphonError

PROTOCOL_VERSION = 1
MAX_JSON_BYTES = 4096  # requests and commands: anything larger is refused unread
MAX_LEVEL_CHARS = 64  # owner names, node names, session ids
SESSION_ID_BYTES = 16  # secrets.token_urlsafe(16): 128 random bits, 22 characters

# Error codes: stable strings, counted per code in the node's metrics.
BAD_JSON = "bad_json"  # not UTF-8 JSON, or not an object
BAD_REQUEST = "bad_request"  # valid JSON, wrong fields
UNKNOWN_COMMAND = "unknown_command"
UNKNOWN_SESSION = "unknown_session"  # no such session on this node (never was, or forgotten)
SESSION_CLOSED = "session_closed"  # closed recently (by the client, a timeout, or the node)
BAD_FRAME = "bad_frame"  # audio header, size, format or samples not acceptable
OUT_OF_ORDER = "out_of_order"  # sequence number below the last one accepted: dropped
DUPLICATE = "duplicate"  # sequence number equal to the last one accepted: dropped
INPUT_OVERFLOW = "input_overflow"  # frames arrive faster than real time: oldest dropped
NODE_BEHIND = "node_behind"  # the node steps slower than real time: frames dropped there
TOO_LARGE = "too_large"  # payload above the size limit of its topic
BAD_SAMPLING = "bad_sampling"
BAD_REPLY_TOPIC = "bad_reply_topic"
FULL = "full"  # no free slot on this node
BUSY = "busy"  # too many requests and commands waiting on the node: this one is dropped
RETAINED = "retained"  # a retained request, command or frame: stale by nature, ignored


class ProtocolError(AntiphonError):
    """A message that breaks the protocol; `code` is one of the codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def valid_level(text: str) -> bool:
    """One topic level that is safe to build topics and ACL patterns from."""
    return (
        0 < len(text) <= MAX_LEVEL_CHARS
        and not text.startswith("$")
        and not any(c in text for c in "/+#\0")
        and text.isprintable()
    )


@dataclass(frozen=True)
class SessionTopics:
    base: str  # <prefix>/<node>/session/<owner>/<id>

    @property
    def in_audio(self) -> str:
        return f"{self.base}/in/audio"

    @property
    def ctl(self) -> str:
        return f"{self.base}/ctl"

    @property
    def out_audio(self) -> str:
        return f"{self.base}/out/audio"

    @property
    def out_text(self) -> str:
        return f"{self.base}/out/text"

    @property
    def out_event(self) -> str:
        return f"{self.base}/out/event"

    @property
    def out(self) -> str:
        """Filter for everything the node sends to the session."""
        return f"{self.base}/out/#"


@dataclass(frozen=True)
class Topics:
    prefix: str
    node: str

    def __post_init__(self) -> None:
        levels = self.prefix.split("/")
        if not all(valid_level(level) for level in levels):
            raise ProtocolError(BAD_REQUEST, f"unusable topic prefix {self.prefix!r}")
        if not valid_level(self.node):
            raise ProtocolError(BAD_REQUEST, f"unusable node name {self.node!r}")

    @property
    def status(self) -> str:
        return f"{self.prefix}/{self.node}/status"

    @property
    def info(self) -> str:
        return f"{self.prefix}/{self.node}/info"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}/{self.node}/metrics"

    @property
    def errors(self) -> str:
        """Errors about messages that name no valid session and no valid reply topic."""
        return f"{self.prefix}/{self.node}/errors"

    @property
    def node_requests(self) -> str:
        return f"{self.prefix}/{self.node}/requests"

    @property
    def fleet_requests(self) -> str:
        return f"{self.prefix}/requests"

    @property
    def shared_requests(self) -> str:
        """MQTT 5 shared subscription: each fleet request goes to one node of the group."""
        group = self.prefix.replace("/", "-") + "-nodes"
        return f"$share/{group}/{self.fleet_requests}"

    def session(self, owner: str, session_id: str) -> SessionTopics:
        return SessionTopics(f"{self.prefix}/{self.node}/session/{owner}/{session_id}")

    @property
    def session_filters(self) -> tuple[str, str]:
        """What a node subscribes to for its sessions: every owner's, every id's input."""
        base = f"{self.prefix}/{self.node}/session/+/+"
        return f"{base}/in/audio", f"{base}/ctl"

    def parse_session_topic(self, topic: str) -> tuple[str, str, str] | None:
        """(owner, session id, "in/audio" | "ctl") for this node's session input topics."""
        head = f"{self.prefix}/{self.node}/session/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) == 4 and parts[2:] == ["in", "audio"]:
            return parts[0], parts[1], "in/audio"
        if len(parts) == 3 and parts[2] == "ctl":
            return parts[0], parts[1], "ctl"
        return None

    def reply_root(self, owner: str) -> str:
        return f"{self.prefix}/reply/{owner}/"

    def check_reply_topic(self, topic: str, owner: str) -> str:
        """A node only answers under the requesting owner's reply tree (never anywhere else)."""
        root = self.reply_root(owner)
        rest = topic[len(root) :] if topic.startswith(root) else ""
        if not rest or len(topic) > 512 or any(c in topic for c in "+#\0"):
            raise ProtocolError(BAD_REPLY_TOPIC, f"the reply topic must be under {root}")
        return topic


# --- audio frames ------------------------------------------------------------------------------


class SampleFormat(IntEnum):
    S16 = 1  # int16 little-endian; float = int / 32768
    F32 = 2  # float32 little-endian

    @property
    def width(self) -> int:
        return 2 if self is SampleFormat.S16 else 4

    @classmethod
    def named(cls, name: str) -> SampleFormat:
        formats = {"s16": cls.S16, "f32": cls.F32}
        if name not in formats:
            raise ProtocolError(BAD_REQUEST, f"format must be one of {sorted(formats)}")
        return formats[name]


# magic "AP", version, format, sequence, samples, flags, then four timings in microseconds (zero
# from clients): node residence, encode, LM, decode. Little-endian, 28 bytes.
AUDIO_HEADER = struct.Struct("<2sBBIHHIIII")
AUDIO_MAGIC = b"AP"
AUDIO_VERSION = 1


@dataclass(frozen=True)
class AudioFrame:
    sequence: int  # client frames count up from 0; a reply carries its input frame's number
    pcm: np.ndarray  # float32 [samples] in [-1, 1]
    format: SampleFormat = SampleFormat.S16
    node_us: int = 0  # replies: input frame's arrival at the node -> reply published
    encode_us: int = 0  # replies: the batched step's parts
    lm_us: int = 0
    decode_us: int = 0


def max_audio_bytes(frame_size: int) -> int:
    return AUDIO_HEADER.size + frame_size * SampleFormat.F32.width


def encode_audio(frame: AudioFrame) -> bytes:
    pcm = np.asarray(frame.pcm, dtype=np.float32)
    if frame.format is SampleFormat.S16:
        body = np.clip(np.round(pcm * 32768.0), -32768, 32767).astype("<i2").tobytes()
    else:
        body = pcm.astype("<f4").tobytes()
    timings = (frame.node_us, frame.encode_us, frame.lm_us, frame.decode_us)
    header = AUDIO_HEADER.pack(
        AUDIO_MAGIC,
        AUDIO_VERSION,
        int(frame.format),
        frame.sequence & 0xFFFFFFFF,
        len(pcm),
        0,
        *(min(max(0, int(t)), 0xFFFFFFFF) for t in timings),
    )
    return header + body


def decode_audio(payload: bytes, frame_size: int) -> AudioFrame:
    """A frame of exactly `frame_size` samples, or ProtocolError(BAD_FRAME / TOO_LARGE)."""
    if len(payload) > max_audio_bytes(frame_size):
        raise ProtocolError(TOO_LARGE, f"audio payload of {len(payload)} bytes is too large")
    if len(payload) < AUDIO_HEADER.size:
        raise ProtocolError(BAD_FRAME, f"audio payload of {len(payload)} bytes has no header")
    magic, version, code, sequence, samples, _flags, *timings = AUDIO_HEADER.unpack_from(payload)
    if magic != AUDIO_MAGIC or version != AUDIO_VERSION:
        raise ProtocolError(BAD_FRAME, f"not an audio frame of protocol version {AUDIO_VERSION}")
    try:
        sample_format = SampleFormat(code)
    except ValueError:
        raise ProtocolError(BAD_FRAME, f"unknown sample format {code} (1: s16, 2: f32)") from None
    if samples != frame_size:
        raise ProtocolError(BAD_FRAME, f"a frame has {frame_size} samples, not {samples}")
    body = payload[AUDIO_HEADER.size :]
    if len(body) != samples * sample_format.width:
        raise ProtocolError(
            BAD_FRAME,
            f"{samples} samples of {sample_format.name} need "
            f"{samples * sample_format.width} bytes, got {len(body)}",
        )
    if sample_format is SampleFormat.S16:
        pcm = np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0
    else:
        pcm = np.frombuffer(body, dtype="<f4").astype(np.float32)
        if not np.isfinite(pcm).all():
            raise ProtocolError(BAD_FRAME, "float32 samples must be finite")
        pcm = np.clip(pcm, -1.0, 1.0)
    return AudioFrame(sequence, pcm, sample_format, *timings)


# --- JSON messages -----------------------------------------------------------------------------


def encode_json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def decode_json(payload: bytes, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    if len(payload) > limit:
        raise ProtocolError(TOO_LARGE, f"a JSON message may have {limit} bytes, not {len(payload)}")
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(BAD_JSON, f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(BAD_JSON, "a message must be a JSON object")
    return message


@dataclass(frozen=True)
class SessionRequest:
    owner: str  # the client's broker username (or client id on an open broker): in the topics
    format: SampleFormat  # of the node's replies; clients may send either format
    sampling: dict[str, Any]  # overrides of the node's defaults, checked by `parse_sampling`
    reply_to: str | None  # MQTT 3.1.1 clients; MQTT 5 clients use the Response Topic property
    correlation: str | None


def parse_request(message: dict[str, Any]) -> SessionRequest:
    owner = message.get("owner")
    if not isinstance(owner, str) or not valid_level(owner):
        raise ProtocolError(
            BAD_REQUEST, "'owner' must be your broker username (one topic level, no / + # $)"
        )
    fmt = message.get("format", "s16")
    sampling = message.get("sampling", {})
    reply_to, correlation = message.get("reply_to"), message.get("correlation")
    if not isinstance(fmt, str):
        raise ProtocolError(BAD_REQUEST, "'format' must be 's16' or 'f32'")
    if not isinstance(sampling, dict):
        raise ProtocolError(BAD_REQUEST, "'sampling' must be an object")
    if reply_to is not None and not isinstance(reply_to, str):
        raise ProtocolError(BAD_REQUEST, "'reply_to' must be a topic")
    if correlation is not None and not isinstance(correlation, str):
        raise ProtocolError(BAD_REQUEST, "'correlation' must be a string")
    return SessionRequest(owner, SampleFormat.named(fmt), sampling, reply_to, correlation)


_SAMPLING_LIMITS: dict[str, tuple[type, float, float]] = {
    "text_temperature": (float, 0.0, 100.0),
    "audio_temperature": (float, 0.0, 100.0),
    "text_top_k": (int, 0, 1_000_000),  # sampling clamps k to the vocabulary
    "audio_top_k": (int, 0, 1_000_000),
    "seed": (int, 0, 2**63 - 1),
}


def parse_sampling(fields: dict[str, Any], base: SamplingParams) -> SamplingParams:
    """`base` with the given fields replaced; unknown fields, wrong types and ranges refused."""
    values = {name: getattr(base, name) for name in _SAMPLING_LIMITS}
    for name, value in fields.items():
        if name not in _SAMPLING_LIMITS:
            raise ProtocolError(
                BAD_SAMPLING, f"unknown sampling field {name!r} (known: {sorted(_SAMPLING_LIMITS)})"
            )
        kind, low, high = _SAMPLING_LIMITS[name]
        number_ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not number_ok or (kind is int and not isinstance(value, int)):
            raise ProtocolError(
                BAD_SAMPLING, f"{name} must be a{'n integer' if kind is int else ' number'}"
            )
        if not (math.isfinite(value) and low <= value <= high):
            raise ProtocolError(BAD_SAMPLING, f"{name} must be between {low} and {high}")
        values[name] = kind(value)
    return SamplingParams(**values)


@dataclass(frozen=True)
class Command:
    name: str  # close | reset | mute | sampling
    muted: bool = False
    sampling: dict[str, Any] | None = None


COMMANDS = ("close", "reset", "mute", "sampling")


def parse_command(message: dict[str, Any]) -> Command:
    name = message.get("cmd")
    if name not in COMMANDS:
        raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {name!r} (known: {list(COMMANDS)})")
    if name == "mute":
        muted = message.get("muted", True)
        if not isinstance(muted, bool):
            raise ProtocolError(BAD_REQUEST, "'muted' must be true or false")
        return Command(name, muted=muted)
    if name == "sampling":
        fields = {k: v for k, v in message.items() if k != "cmd"}
        return Command(name, sampling=fields)
    return Command(name)


def error_message(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON of an error event: ErrorEvent's fields plus the code (and a count, say)."""
    return {"type": "error", "code": code, "message": message, "fatal": False, **extra}
