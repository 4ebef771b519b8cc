"""`antiphon eval` on conversations built from espeak-ng speech placed at known times.

Each scenario is laid out on a timeline in seconds; the evaluation must find the speech where it
was put (VAD onsets within 100 ms), the latencies and overlaps as built, and classify the turns.
The metrics' rules themselves are checked on hand-written segments (no audio) first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from app.core.events import FrameStats, HeardEvent, TextEvent
from app.eval import cli as evaluate
from app.eval import fdb, monologue, timeline, turns, vad
from app.eval.turns import Piece, TurnRules

SR = 24000
FRAME = 1920 / SR
TOLERANCE = 0.1  # seconds: what the issue asks of onsets and latencies

SENTENCES = {
    "question": "What is the weather like in Paris today",
    "answer": "It is sunny and warm in Paris today",
    "yeah": "yeah",
    "visit": "I would like to visit",
    "museums": "the old museums next week",
    "history": "Let me tell you about the history of the city and its many famous museums",
    "wait": "Wait what about tomorrow",
    "rain": "It will rain tomorrow",
}


# --- the rules on hand-written segments ------------------------------------------------------


def kinds(events: list[turns.TurnEvent]) -> list[tuple[str, bool]]:
    return [(e.kind, e.took_turn) for e in events]


def test_end_of_turn_pause_interruption_and_backchannel_are_told_apart() -> None:
    user = [(0.0, 2.0), (3.0, 4.0), (5.0, 6.0), (8.0, 8.5), (10.0, 11.5)]
    assistant = [(6.4, 9.5), (12.0, 14.0)]
    events = turns.turn_events(user, assistant, None, 15.0)
    assert kinds(events) == [
        ("pause", False),  # user resumes after 1 s; the assistant stayed silent
        ("pause", False),
        ("end_of_turn", True),  # answered 0.4 s after the user's end
        ("user_backchannel", True),  # 0.5 s of user speech over the assistant, which goes on
        ("end_of_turn", True),  # the user's next turn, answered after 0.5 s
    ]
    assert events[2].latency == pytest.approx(0.4)
    assert events[4].latency == pytest.approx(0.5)

    interrupted = turns.turn_events([(0, 2), (4, 6)], [(2.5, 4.7), (6.3, 8)], None, 9.0)
    assert kinds(interrupted) == [("end_of_turn", True), ("interruption", True)]
    assert interrupted[1].stop_latency == pytest.approx(0.7)
    assert interrupted[1].latency == pytest.approx(0.3)


def test_an_assistant_cutting_into_a_pause_is_a_turn_over_not_a_user_interruption() -> None:
    # the user pauses 1 s; the assistant starts after 0.3 s; the user resumes 0.5 s later
    events = turns.turn_events([(0, 2), (3, 5)], [(2.3, 4.0)], None, 8.0)
    assert kinds(events) == [("pause", True), ("end_of_turn", False)]


def test_the_turn_rule_counts_words_from_the_monologue_when_there_is_one() -> None:
    rules = TurnRules()
    short = [(1.0, 1.6)]  # 0.6 s of speech: a turn only if it has more than 3 words
    words = [Piece(1.0 + 0.1 * i, f" w{i}") for i in range(5)]
    assert fdb.fdb_pause_handling(short, None, rules)["turn_over"] == 0  # duration only
    assert fdb.fdb_pause_handling(short, words[:3], rules)["turn_over"] == 0
    assert fdb.fdb_pause_handling(short, words, rules)["turn_over"] == 1
    pieces = [Piece(1.0, " Hel"), Piece(1.1, "lo"), Piece(1.2, " there"), Piece(1.3, "<17>")]
    assert turns.count_words(pieces, 0, 2, 0) == 3
    assert fdb.fdb_pause_handling([(1.0, 2.0)], [], rules)["turn_over"] == 1  # 1 s: a turn


def test_fdb_backchannel_rule_and_runtime_figures() -> None:
    result = fdb.fdb_backchannel([(1, 1.5), (4, 4.4)], None, 10.0)
    assert result == {"turn_over": 0, "backchannels": 2, "backchannel_per_s": 0.2}
    assert fdb.fdb_backchannel([(1, 1.5), (4, 6)], None, 10.0)["turn_over"] == 1

    frames = [{"compute_ms": 10.0 * (i % 10), "underruns": i // 50} for i in range(100)]
    frames[3] = {"compute_ms": 120.0, "underruns": 0}
    figures = evaluate.runtime(frames, 0.08)
    assert figures is not None
    assert figures["frames_slower_than_real_time"] == 11  # ten of 90 ms, one of 120 ms
    assert figures["underruns"] == 1
    assert figures["compute_ms"]["max"] == 120.0
    assert figures["real_time_factor"] == pytest.approx(figures["compute_ms"]["median"] / 80)
    assert evaluate.runtime([], 0.08) is None


def test_monologue_against_speech() -> None:
    speech = [(1.0, 3.0)]
    pieces = [Piece(1.04, " one"), Piece(1.6, " two"), Piece(5.0, " ghost")]
    result = monologue.monologue(pieces, speech, 10.0, FRAME)
    assert result["tokens_per_s"] == pytest.approx(0.3)
    assert result["text_while_silent"] == pytest.approx(1 / 3)  # "ghost", far from speech
    # speech within 1 s of text: 1.0 .. 2.6 (2.7 on 80 ms frames); the rest of 2 s is without
    assert result["speech_without_text"] == pytest.approx(0.15, abs=0.06)


# --- building conversations from speech ------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Each sentence spoken by espeak-ng, at 24 kHz, trimmed to where it is audible."""
    espeak = shutil.which("espeak-ng")
    assert espeak, "these tests need espeak-ng: apt-get install espeak-ng"
    folder = tmp_path_factory.mktemp("espeak")
    clips = {}
    for name, text in SENTENCES.items():
        path = folder / f"{name}.wav"
        subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
        audio, rate = soundfile.read(path, dtype="float32")
        audio = soxr.resample(audio, rate, SR)
        audible = np.flatnonzero(np.abs(audio) > 0.01)
        clips[name] = audio[audible[0] : audible[-1] + 1]
    return clips


def seconds(clip: np.ndarray) -> float:
    return len(clip) / SR


def lay_out(duration: float, placed: list[tuple[float, np.ndarray]]) -> np.ndarray:
    track = np.zeros(round(duration * SR), dtype=np.float32)
    for start, clip in placed:
        at = round(start * SR)
        track[at : at + len(clip)] += clip[: len(track) - at]
    return track


def words_of(name: str, start: float, clip: np.ndarray) -> list[tuple[float, str]]:
    """The sentence's words spread evenly over its clip: a stand-in for the inner monologue."""
    words = SENTENCES[name].split()
    step = seconds(clip) / len(words)
    return [(start + i * step, f" {word}") for i, word in enumerate(words)]


def write_recording(
    folder: Path,
    assistant: np.ndarray,
    user: np.ndarray,
    words: list[tuple[float, str]],
    rate: int = SR,
    channels: int = 2,
) -> None:
    folder.mkdir(parents=True)
    stereo = np.stack([assistant, user], axis=1)[:, :channels]
    soundfile.write(folder / "session.wav", stereo, rate, subtype="PCM_16")
    lines = [
        TextEvent(frame * FRAME, frame, 1000 + i, text).to_json()
        for i, (time, text) in enumerate(words)
        if (frame := round(time / FRAME)) >= 0
    ]
    # what a model that writes down the user's words heard: never taken for what it said
    lines += [HeardEvent(0.0, 0, 999, " never said by the assistant").to_json()]
    lines += [
        FrameStats(t * FRAME, t, 5.0, 30.0, 5.0, 40.0 + t % 5, 0.5, underruns=t // 100).to_json()
        for t in range(len(assistant) // 1920)
    ]
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = {"format": "antiphon-recording", "sample_rate": SR, "frame_size": 1920}
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def write_fdb(folder: Path, user: np.ndarray, assistant: np.ndarray, rate: int = 16000) -> None:
    folder.mkdir(parents=True)
    soundfile.write(folder / "input.wav", soxr.resample(user, SR, 16000), 16000)
    soundfile.write(folder / "output.wav", soxr.resample(assistant, SR, rate), rate)


def run_eval(*paths: Path, json_out: bool = True, out: Path | None = None) -> int:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    argv = [str(p) for p in paths] + (["--json"] if json_out else [])
    argv += ["--out", str(out)] if out else []
    return evaluate.run(parser.parse_args(argv))


# --- a whole conversation --------------------------------------------------------------------


@pytest.fixture(scope="module")
def conversation(speech: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory):
    """A question answered after 0.6 s (with a user "yeah" over the answer), a 1.5 s user pause
    left alone, a turn answered after 0.5 s, a user interruption 1.5 s into that answer which the
    assistant yields to after 0.4 s, then answers 0.5 s after the interruption ends."""
    s = speech
    u1 = 0.5
    a1 = u1 + seconds(s["question"]) + 0.6
    yeah = a1 + 0.6
    u2a = a1 + seconds(s["answer"]) + 1.0
    u2b = u2a + seconds(s["visit"]) + 1.5
    a2 = u2b + seconds(s["museums"]) + 0.5
    u3 = a2 + 1.5
    a2_cut = s["history"][: round((u3 + 0.4 - a2) * SR)]
    a3 = u3 + seconds(s["wait"]) + 0.5
    duration = a3 + seconds(s["rain"]) + 1.0
    user_at = [(u1, s["question"]), (yeah, s["yeah"]), (u2a, s["visit"]), (u2b, s["museums"])]
    user_at.append((u3, s["wait"]))
    assistant_at = [(a1, s["answer"]), (a2, a2_cut), (a3, s["rain"])]
    words = words_of("answer", a1, s["answer"]) + words_of("history", a2, s["history"])[:4]
    words += words_of("rain", a3, s["rain"])
    folder = tmp_path_factory.mktemp("eval") / "session-1"
    write_recording(folder, lay_out(duration, assistant_at), lay_out(duration, user_at), words)
    return folder, user_at, assistant_at


def test_speech_onsets_latencies_and_overlap_come_out_as_built(conversation, capsys) -> None:
    folder, user_at, assistant_at = conversation
    assert run_eval(folder) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == []
    (result,) = report["recordings"]

    for channel, placed in (("user", user_at), ("assistant", assistant_at)):
        found = result["segments"][channel]
        for start, clip in placed:  # each placed sentence begins and ends a segment
            error = min(abs(seg[0] - start) for seg in found)
            assert error < TOLERANCE, f"{channel} onset at {start:.2f} s found {error:.3f} s off"
            end = start + seconds(clip)
            assert min(abs(seg[1] - end) for seg in found) < TOLERANCE

    kinds_found = [(e["kind"], e["took_turn"]) for e in result["turn_events"]]
    assert kinds_found == [
        ("end_of_turn", True),
        ("user_backchannel", True),  # the assistant goes on after the user's "yeah"
        ("pause", False),
        ("end_of_turn", True),
        ("interruption", True),
    ]
    events = result["turn_events"]
    assert events[0]["latency"] == pytest.approx(0.6, abs=TOLERANCE)
    assert events[3]["latency"] == pytest.approx(0.5, abs=TOLERANCE)
    assert events[4]["stop_latency"] == pytest.approx(0.4, abs=TOLERANCE)
    assert events[4]["latency"] == pytest.approx(0.5, abs=TOLERANCE)

    yeah = seconds(user_at[1][1])
    assert result["speech"]["overlap_s"] == pytest.approx(yeah + 0.4, abs=2 * TOLERANCE)
    turns = result["turns"]
    assert turns["pause"]["turn_over_rate"] == 0.0
    assert turns["end_of_turn"]["turn_over_rate"] == 1.0

    assert result["monologue"]["pieces"] == len(SENTENCES["answer"].split()) + 4 + 4
    frames = round(result["speech"]["duration_s"] * SR) // 1920
    assert result["runtime"]["frames"] == frames
    assert result["runtime"]["compute_ms"]["max"] == 44.0
    assert result["runtime"]["underruns"] == (frames - 1) // 100  # a running total

    picture = folder / "timeline.png"
    assert picture.stat().st_size > 10_000
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / "eval.json").read_text())["name"] == result["name"]


def test_the_readable_report_is_a_table(conversation, capsys, tmp_path: Path) -> None:
    folder, _, _ = conversation
    assert run_eval(folder, json_out=False, out=tmp_path / "out") == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["recording", "dur", "s"]
    assert "session-1" in text and "end of turn" in text and "interruption" in text
    assert (tmp_path / "out" / "session-1" / "timeline.png").is_file()
    assert (tmp_path / "out" / "report.json").is_file()


# --- a Full-Duplex-Bench tree ----------------------------------------------------------------


def test_fdb_categories_from_folder_names(speech, tmp_path: Path, capsys) -> None:
    s = speech
    root = tmp_path / "fdb"
    end = 0.5 + seconds(s["question"])
    duration = end + 4.0
    write_fdb(
        root / "candor_turn_taking" / "0001",
        lay_out(duration, [(0.5, s["question"])]),
        lay_out(duration, [(end + 0.7, s["answer"])]),
    )
    (root / "candor_turn_taking" / "0001" / "turn_taking.json").write_text(
        json.dumps([{"text": "[TURN-TAKING]", "timestamp": [end, end + 0.5]}])
    )
    pause = 0.5 + seconds(s["visit"])
    resume = pause + 1.5
    user = lay_out(resume + 3.0, [(0.5, s["visit"]), (resume, s["museums"])])
    write_fdb(root / "synthetic_pause_handling" / "0001", user, lay_out(resume + 3, []))
    write_fdb(
        root / "synthetic_pause_handling" / "0002",
        user,
        lay_out(resume + 3.0, [(pause + 0.3, s["answer"])]),
    )
    interrupt = (4.0, 4.0 + seconds(s["wait"]))
    write_fdb(
        root / "synthetic_user_interruption" / "0001",
        lay_out(8.0, [(0.3, s["visit"]), (interrupt[0], s["wait"])]),
        lay_out(8.0, [(2.0, s["history"][: round(2.5 * SR)]), (interrupt[1] + 0.6, s["rain"])]),
    )
    (root / "synthetic_user_interruption" / "0001" / "interrupt.json").write_text(
        json.dumps([{"context": "", "interrupt": "", "timestamp": list(interrupt)}])
    )

    assert run_eval(root) == 0
    report = json.loads(capsys.readouterr().out)
    by_name = {"/".join(Path(r["name"]).parts[-2:]): r for r in report["recordings"]}
    turn = by_name["candor_turn_taking/0001"]
    assert turn["category"] == "smooth_turn_taking"
    assert turn["words_from"].startswith("none")
    assert turn["fdb"]["turn_over"] == 1
    assert turn["fdb"]["latency_s"] == pytest.approx(0.7, abs=TOLERANCE)
    assert by_name["synthetic_pause_handling/0001"]["fdb"]["turn_over"] == 0
    assert by_name["synthetic_pause_handling/0002"]["fdb"]["turn_over"] == 1
    cut = by_name["synthetic_user_interruption/0001"]["fdb"]
    assert cut["stop_latency_s"] == pytest.approx(0.5, abs=TOLERANCE)
    assert cut["latency_s"] == pytest.approx(0.6, abs=TOLERANCE)
    fdb = report["aggregate"]["fdb"]
    assert fdb["pause_handling"] == pytest.approx({"samples": 2, "turn_over_rate": 0.5})
    assert fdb["smooth_turn_taking"]["latency_mean_s"] == pytest.approx(0.7, abs=TOLERANCE)


# --- bad input -------------------------------------------------------------------------------


def test_bad_folders_are_named_and_the_rest_is_evaluated(speech, tmp_path: Path, capsys) -> None:
    s = speech
    assistant = lay_out(4.0, [(2.5, s["yeah"])])
    user = lay_out(4.0, [(0.3, s["question"])])
    root = tmp_path / "tree"
    write_recording(root / "good", assistant, user, [(2.5, " yeah")])
    write_recording(root / "mono", assistant, user, [], channels=1)
    write_recording(root / "rate", soxr.resample(assistant, SR, 16000),
                    soxr.resample(user, SR, 16000), [], rate=16000)  # fmt: skip
    write_recording(root / "missing", assistant, user, [])
    (root / "missing" / "meta.json").unlink()
    (root / "missing" / "events.jsonl").unlink()
    write_recording(root / "broken", assistant, user, [(2.5, " yeah")])
    events = root / "broken" / "events.jsonl"
    lines = events.read_text().splitlines()
    lines.insert(3, "{not json")
    events.write_text("\n".join(lines) + '\n{"type": "frame", "ti')  # killed mid-line
    fdb = root / "pause_handling" / "0001"
    write_fdb(fdb, user, assistant, rate=24000)  # output.wav at another rate than input.wav

    assert run_eval(root, tmp_path / "nowhere") == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert set(failed) == {"mono", "rate", "missing", "0001", "nowhere"}
    assert "session.wav has 1 channel" in failed["mono"]
    assert "16000 Hz" in failed["rate"] and "24000 Hz" in failed["rate"]
    assert "meta.json" in failed["missing"] and "events.jsonl" in failed["missing"]
    assert "output.wav is 24000 Hz" in failed["0001"]
    assert "does not exist" in failed["nowhere"]
    for name in failed:
        assert f"cannot evaluate {tmp_path}" in captured.err and name in captured.err

    evaluated = {Path(r["path"]).name: r for r in report["recordings"]}
    assert set(evaluated) == {"good", "broken"}
    (warning,) = evaluated["broken"]["warnings"]
    assert "events.jsonl" in warning and "2 line(s)" in warning and "line 4" in warning
    assert evaluated["broken"]["monologue"]["pieces"] == 1
    assert (root / "broken" / "timeline.png").stat().st_size > 0


def test_missing_silero_vad_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_silero(name: str, *args, **kwargs):
        if name.startswith("silero_vad"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    vad._silero.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_silero)
    try:
        with pytest.raises(vad.VadUnavailableError, match="pip install"):
            vad.speech_segments(np.zeros(SR, np.float32), SR)
    finally:
        monkeypatch.undo()
        vad._silero.cache_clear()


def test_short_recordings_are_evaluated_and_an_odd_folder_does_not_stop_the_rest(
    speech, tmp_path: Path, capsys
) -> None:
    """Issue 13 item 3: a recording shorter than the monologue's 2.16 s window was a crash
    (np.convolve "same" returns the kernel's length), and one crash lost every folder's table."""
    s = speech
    root = tmp_path / "tree"
    for name, duration in (("short", 1.0), ("one_frame", 0.08), ("good", 4.0)):
        write_recording(
            root / name,
            lay_out(duration, [(0.0, s["yeah"])]),
            lay_out(duration, []),
            [(0.0, " yeah")],
        )
    write_recording(root / "odd", lay_out(2.0, []), lay_out(2.0, []), [])
    with (root / "odd" / "events.jsonl").open("a") as events:  # a counter that is no number
        events.write('{"type": "frame", "frame": 24, "compute_ms": 9.0, "underruns": "many"}\n')
    write_recording(root / "corrupt", lay_out(2.0, []), lay_out(2.0, []), [])
    (root / "corrupt" / "session.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)

    assert run_eval(root) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    evaluated = {Path(r["path"]).name: r for r in report["recordings"]}
    assert set(evaluated) == {"short", "one_frame", "good", "odd"}
    assert evaluated["short"]["speech"]["duration_s"] == pytest.approx(1.0)
    assert evaluated["short"]["monologue"]["pieces"] == 1
    assert evaluated["one_frame"]["monologue"]["text_frames"] == 1
    assert evaluated["odd"]["runtime"]["frames"] == 26  # the odd field is left out, not the line
    assert evaluated["odd"]["runtime"]["underruns"] == 0
    (failed,) = report["failed"]
    assert Path(failed["path"]).name == "corrupt" and "session.wav" in failed["error"]
    assert f"cannot evaluate {root / 'corrupt'}" in captured.err
    assert "Traceback" not in captured.err


def test_monologue_labels_of_a_five_minute_session_never_overlap() -> None:
    """Issue 13 item 9: on a long session the words, at most 40 inches for 5 minutes, were
    drawn over one another. Every label drawn must stand clear of the others, inside the axes;
    the words left out for room are said to be."""
    pyplot = pytest.importorskip("matplotlib.pyplot")
    rng = np.random.default_rng(13)
    duration = 300.0
    vocabulary = ["a", "yes", "well", "think", "because", "interesting", "understanding", "so"]
    pieces, t = [], 0.5
    while t < duration - 0.5:
        pieces.append(Piece(t, " " + vocabulary[rng.integers(len(vocabulary))]))
        t += float(rng.uniform(0.15, 0.6))  # about three words a second, as speech goes
    silence = np.zeros(round(duration * SR), np.float32)
    fig = timeline.timeline_figure(silence, silence, SR, [(0.0, duration)], [], pieces)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        text_ax = fig.axes[0]
        area = text_ax.get_window_extent(renderer)
        words = set(vocabulary)
        boxes = [
            text.get_window_extent(renderer)
            for text in text_ax.texts
            if text.get_visible() and text.get_text() in words
        ]
        notes = [t.get_text() for t in text_ax.texts if "not shown" in t.get_text()]
    finally:
        pyplot.close(fig)
    assert len(boxes) > 100  # thinned, not emptied
    for box in boxes:
        assert area.x0 - 1 <= box.x0 and box.x1 <= area.x1 + 1, "a word drawn outside the axes"
    boxes.sort(key=lambda b: b.x0)
    for i, box in enumerate(boxes):
        for other in boxes[i + 1 :]:
            if other.x0 >= box.x1:
                break
            assert not box.overlaps(other), f"labels overlap at x = {box.x0:.0f} px"
    if len(boxes) < len(pieces):
        (note,) = notes
        assert str(len(pieces) - len(boxes)) in note
