"""Faults on the recording side: damaged recordings for `antiphon eval`, an events.jsonl cut
mid-line, `antiphon serve` SIGKILLed mid-recording, a sound device that vanishes mid-talk.

Every fault gets the same three checks: no traceback; a message that says what happened and
what to do; nothing lost (every recording readable, its WAV as long as its events say, the
other recordings evaluated). docs/reliability.md lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from app.core.events import EventLog, FrameStats
from app.core.recording import EVENTS_FILE, META_FILE, SESSION_WAV, RecordingError, read_recording
from app.core.runtime import CollectingSink, PacedFileSource, RealClock
from app.eval.folders import load_recording
from app.talk.remote import RemoteTalkSession
from app.wire.mqtt import BrokerSettings, make_client
from tests.faults.conftest import assert_no_traceback
from tests.faults.recording_helpers import (
    ROOT,
    F,
    antiphon,
    assert_whole,
    evaluated,
    make_recording,
)
from tests.jack_server import require_portaudio, start_jackd
from tests.mosquitto import Mosquitto, running_broker


@pytest.fixture(autouse=True)
def hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTIPHON_CACHE", str(tmp_path / "cache"))


# --- damaged recordings for `antiphon eval` ------------------------------------------------------


def _damage(root: Path) -> dict[str, str]:
    """One folder per kind of damage; what eval must say of each (a failure or a warning)."""
    make_recording(root / "good", 50)
    make_recording(root / "short", 1)  # one frame: 80 ms
    make_recording(root / "empty", 0)  # closed before its first frame
    make_recording(root / "zero_bytes", 10)
    (root / "zero_bytes" / SESSION_WAV).write_bytes(b"")
    make_recording(root / "truncated", 50)  # a copy in part: the WAV ends mid-recording
    wav = (root / "truncated" / SESSION_WAV).read_bytes()
    (root / "truncated" / SESSION_WAV).write_bytes(wav[: 44 + 20 * F * 4 + 3])
    make_recording(root / "corrupt", 20)
    (root / "corrupt" / SESSION_WAV).write_bytes(np.random.default_rng(1).bytes(20000))
    make_recording(root / "bad_header", 20)
    header = bytearray((root / "bad_header" / SESSION_WAV).read_bytes())
    header[20:36] = b"\xff" * 16  # the fmt chunk
    (root / "bad_header" / SESSION_WAV).write_bytes(bytes(header))
    make_recording(root / "cut_line", 30)  # killed while writing an event
    with (root / "cut_line" / EVENTS_FILE).open("ab") as events:
        events.write(b'{"type":"text","time":2.4,"frame":30,"tok')
    make_recording(root / "cut_utf8", 30)  # killed in the middle of a character
    with (root / "cut_utf8" / EVENTS_FILE).open("ab") as events:
        events.write('{"type":"text","time":2.4,"frame":29,"token":7,"text":" café'.encode()[:-1])
    make_recording(root / "meta_lost", 20)
    (root / "meta_lost" / META_FILE).write_text("")
    make_recording(root / "open", 20)  # its process was killed: meta.json as it was opened
    meta = json.loads((root / "open" / META_FILE).read_text())
    meta = {k: v for k, v in meta.items() if k not in ("ended_at", "frames", "silent_frames")}
    (root / "open" / META_FILE).write_text(json.dumps(meta | {"summary": None}))
    return {
        "empty": "holds no audio (0 samples): the session ended before its first frame",
        "zero_bytes": "is empty (0 bytes)",
        "corrupt": "is not a WAV file",
        "bad_header": "it is damaged",
        "truncated": "holds 20 frames but the recording describes 50: its audio was cut short",
        "cut_line": "1 line(s) are not JSON objects and were skipped (line 37)",
        "cut_utf8": "1 line(s) are not JSON objects and were skipped (line 37)",
        "meta_lost": "meta.json is not readable JSON",
        "open": "the recording was not closed",
    }


def test_eval_names_each_damaged_recording_and_evaluates_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    said = _damage(root)
    out = tmp_path / "reports"
    result = antiphon("eval", str(root), "--json", "--out", str(out))
    assert_no_traceback(result.stderr)
    assert result.returncode == 1  # some folders could not be evaluated, and it says which
    done, failed = evaluated(result)
    assert set(failed) == {"empty", "zero_bytes", "corrupt", "bad_header"}
    for name, error in failed.items():
        assert said[name] in error, (name, error)
        assert f"cannot evaluate {root / name}: " in result.stderr
    assert "libmpg123" not in result.stderr and "possibly a pipe" not in result.stderr
    assert set(done) == {"good", "short", "truncated", "cut_line", "cut_utf8", "meta_lost", "open"}
    for name in ("truncated", "cut_line", "cut_utf8", "meta_lost", "open"):
        assert any(said[name] in w for w in done[name]["warnings"]), done[name]["warnings"]
        assert f"antiphon: warning: {root / name}" in result.stderr
    # nothing lost: what the damaged folders still hold is evaluated, as far as it goes
    assert done["good"]["speech"]["duration_s"] == pytest.approx(4.0)
    assert done["short"]["speech"]["duration_s"] == pytest.approx(0.08)
    assert done["truncated"]["speech"]["duration_s"] == pytest.approx(20 * 0.08, abs=0.001)
    assert done["truncated"]["runtime"]["frames"] == 20  # the events past the audio left out
    assert done["cut_line"]["monologue"]["pieces"] == 6 == done["cut_utf8"]["monologue"]["pieces"]
    assert done["meta_lost"]["runtime"]["frames"] == 20
    for name in done:  # every timeline drawn, and every word inside it
        assert (out / "recordings" / name / "timeline.png").stat().st_size > 0
        conversation = load_recording(root / name)
        duration = len(conversation.assistant) / conversation.sample_rate
        assert all(p.time < duration for p in conversation.pieces or [])


def test_an_events_file_cut_anywhere_in_its_last_line_loses_that_line_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_recording(tmp_path / "whole", 12)
    lines = (tmp_path / "whole" / EVENTS_FILE).read_bytes().splitlines(keepends=True)
    last = lines[-1]
    for cut in range(1, len(last) - 1):  # every byte of the line, the newline excepted
        folder = tmp_path / f"cut{cut}"
        make_recording(folder, 12)
        (folder / EVENTS_FILE).write_bytes(b"".join(lines[:-1]) + last[:cut])
        recording = read_recording(folder)  # the product's reader: the line skipped, warned
        assert len(recording.events) == len(lines) - 1
        assert_whole(folder)
        conversation = load_recording(folder)  # eval's: the same, with a warning it reports
        assert len(conversation.frames) == 11 and len(conversation.warnings) == 1
    assert "last line is truncated" in caplog.text
    # A damaged line before the last is not a kill: the product's reader refuses, eval skips it.
    (tmp_path / "cut1" / EVENTS_FILE).write_bytes(b"".join([*lines[:3], b"{oops\n", *lines[3:]]))
    with pytest.raises(RecordingError, match="line 4: not a JSON object"):
        read_recording(tmp_path / "cut1")
    assert "(line 4" in load_recording(tmp_path / "cut1").warnings[0]


# --- `antiphon serve` SIGKILLed mid-recording ----------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path):
    folder = tmp_path / "broker"
    folder.mkdir()
    with running_broker(folder) as running:
        yield running


async def _wait_online(broker: Mosquitto, node: str, timeout: float = 120.0) -> None:
    async with make_client(BrokerSettings(broker.host, broker.port)) as client:
        await client.subscribe(f"antiphon/{node}/status", qos=1)
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                if message.payload == b"online":
                    return


def test_serve_killed_mid_recording_leaves_both_recordings_whole(
    broker: Mosquitto, tmp_path: Path
) -> None:
    node_dir, client_dir = tmp_path / "node", tmp_path / "client"
    command = [sys.executable, "-m", "app.cli", "serve", "--broker", broker.url, "--node", "n1"]
    command += ["--slots", "2", "--record", str(node_dir)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    serve = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    frames, kill_after = 50, 15
    audio = (0.1 * np.random.default_rng(2).standard_normal(frames * F)).astype(np.float32)
    log = EventLog()
    notices: list[str] = []

    class KillingLog(EventLog):  # SIGKILL the node once it has answered `kill_after` frames
        def emit(self, event) -> None:  # type: ignore[no-untyped-def]
            if isinstance(event, FrameStats) and len(log.of(FrameStats)) == kill_after:
                serve.send_signal(signal.SIGKILL)

    async def main() -> None:
        await _wait_online(broker, "n1")
        session = RemoteTalkSession(
            BrokerSettings(broker.host, broker.port),
            node="n1",
            record=client_dir,
            source=PacedFileSource(audio, F, 24000, RealClock()),
            sink=CollectingSink(),
            notices=notices.append,
        )
        session.events.sinks += [log, KillingLog()]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.run(), 60)

    try:
        asyncio.run(main())
    finally:
        serve.kill()
        serve.wait()
    assert serve.returncode == -signal.SIGKILL
    answered = len(log.of(FrameStats))
    assert kill_after <= answered < frames

    (node_recording,) = [p for p in node_dir.iterdir() if p.is_dir()]
    node = assert_whole(node_recording)  # readable as far as the node got, by any reader
    assert len(node.user) // F >= kill_after and node.meta["summary"] is None
    client = assert_whole(client_dir)  # the conversation's time: every frame, the rest silence
    assert len(client.user) == frames * F and client.meta["silent_frames"] == frames - answered
    last = max(e.frame for e in log.of(FrameStats))  # the last frame the node answered
    assert not client.assistant[(last + 1) * F :].any() and client.assistant[: last * F].any()

    result = antiphon("eval", str(node_recording), str(client_dir), "--json", "--no-timeline")
    assert_no_traceback(result.stderr)
    assert result.returncode == 0, result.stderr
    done, failed = evaluated(result)
    assert not failed and set(done) == {node_recording.name, "client"}
    assert any("not closed" in w for w in done[node_recording.name]["warnings"])
    assert "its process was killed" in result.stderr
    assert done["client"]["speech"]["duration_s"] == pytest.approx(frames * 0.08)


# --- a sound device that vanishes mid-talk -------------------------------------------------------


def test_a_sound_device_that_vanishes_mid_talk_ends_it_with_the_recording_whole(
    tmp_path: Path,
) -> None:
    require_portaudio()
    server = start_jackd()
    record = tmp_path / "talk"
    env = os.environ | {"JACK_DEFAULT_SERVER": server.name, "JACK_NO_START_SERVER": "1"}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "app.cli", "talk", "--input-device", "system"]
    command += ["--output-device", "system", "--record", str(record)]
    talk = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _has_frames(record / SESSION_WAV, 10):
            assert talk.poll() is None, talk.communicate()[1]
            assert time.monotonic() < deadline, "talk never recorded 10 frames"
            time.sleep(0.1)
        server.stop()  # the sound server goes away: both devices vanish
        out, err = talk.communicate(timeout=30)
    finally:
        if talk.poll() is None:
            talk.kill()
            talk.communicate()
        server.stop()
        for leftover in Path("/dev/shm").glob(f"jack_sem.*_{server.name}_*"):
            leftover.unlink(missing_ok=True)
    assert_no_traceback(err)
    assert talk.returncode == 0, err
    assert "lost" in err and "reconnect it and start again; the recording is kept" in err
    recording = assert_whole(record)
    assert recording.meta["summary"] is not None and "ended_at" in recording.meta
    assert len(recording.user) >= 10 * F
    result = antiphon("eval", str(record), "--json", "--no-timeline")
    assert_no_traceback(result.stderr)
    assert result.returncode == 0, result.stderr
    done, _ = evaluated(result)
    assert done["talk"]["speech"]["duration_s"] == pytest.approx(len(recording.user) / 24000)


def _has_frames(wav: Path, frames: int) -> bool:
    try:
        return wav.stat().st_size >= 44 + frames * F * 4
    except FileNotFoundError:
        return False


# --- a full disk mid-recording --------------------------------------------------------------------


def test_a_full_disk_mid_recording_stops_the_recording_not_the_talk(tmp_path: Path) -> None:
    """The file size limit (RLIMIT_FSIZE, what a full disk looks like to a writer: EFBIG) stops
    session.wav at about 4 s of the demo utterance's 6 s; `talk` has no sound device here (nor
    in CI), so the demo utterance is its microphone and the reply goes to a WAV."""
    record, reply = tmp_path / "talk", tmp_path / "reply.wav"
    limit = 400 * 1024

    def small_disk() -> None:  # in the child, before it runs
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    command = [sys.executable, "-m", "app.cli", "talk", "--record", str(record)]
    command += ["--demo-out", str(reply)]
    talk = subprocess.run(
        command, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120, preexec_fn=small_disk,
    )  # fmt: skip
    assert_no_traceback(talk.stderr)
    assert talk.returncode == 0, talk.stderr
    assert (
        "recording stopped: cannot write to" in talk.stderr and "is the disk full?" in talk.stderr
    )
    assert "free disk space or record to another folder; what was written is kept" in talk.stderr
    recording = assert_whole(record)  # whole frames, as many as meta.json says
    assert (record / SESSION_WAV).stat().st_size <= limit
    assert "cannot write" in recording.meta["stopped_early"]
    assert [e["state"] for e in recording.events if e["type"] == "state"][-1] == "recording_stopped"
    assert 30 * F <= len(recording.user) < 75 * F  # 6 s are 75 frames
    # the conversation went on to its end: more frames stepped than the recording holds
    stepped = int(re.search(r"antiphon: (\d+) frames, compute", talk.stderr)[1])  # type: ignore[index]
    assert stepped > recording.meta["summary"]["frames"]
    assert soundfile.info(reply).frames == stepped * F
    result = antiphon("eval", str(record), "--json", "--no-timeline")
    assert_no_traceback(result.stderr)
    assert result.returncode == 0, result.stderr
    done, _ = evaluated(result)
    assert any("the recording stopped early" in w for w in done["talk"]["warnings"])


def test_json_of_a_killed_recording_is_valid_at_every_moment(tmp_path: Path) -> None:
    """meta.json is rewritten atomically: a recording killed at any moment has a whole one."""
    recorder = make_recording(tmp_path / "rec", 3, close=False)
    before = json.loads((tmp_path / "rec" / META_FILE).read_text())
    recorder.close(recorder.summary())
    after = json.loads((tmp_path / "rec" / META_FILE).read_text())
    assert before["summary"] is None and after["summary"]["frames"] == 3
    assert not list((tmp_path / "rec").glob(".*.tmp"))
