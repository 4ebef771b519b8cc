"""Ask `antiphon talk` spoken questions on a JACK dummy sound card, as a person at a laptop would,
and print what it answered: a transcript.

It starts a private JACK server (dummy backend: no sound card needed), runs `antiphon talk` on it
exactly as a user does (the CLI in its own process, the bundled model unless ARGS say otherwise,
echo cancellation on), speaks each question with espeak-ng into the app's microphone port, waits,
and stops the app with SIGTERM. The transcript comes from the app's own recording: the questions
found in its raw microphone, the model's inner monologue on the frame clock.

    .venv/bin/python scripts/ask_on_jack.py                       # five questions, the bundle
    .venv/bin/python scripts/ask_on_jack.py --question "Is ice hot?" -- --seed 3
    .venv/bin/python scripts/ask_on_jack.py --tui docs            # docs/tui.svg and tui.txt

`--tui DIR` runs the app with its terminal UI in a 120x36 tmux window instead of `--no-tui`,
presses `T` (text temperature up) the way a person tries the keys (it records from the start,
`--record`, so the border shows `● rec`), and keeps what the screen showed once the answers
are in: tmux's text of it (DIR/tui.txt) and, a few seconds later, Textual's own screenshot
(DIR/tui.svg), after which Textual ends the app.

Needs jackd2, espeak-ng and the test dependencies (`scripts/setup.sh --dev`); `--tui`, tmux.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.models import MODEL_ENV  # noqa: E402
from app.core.recording import MICROPHONE_WAV, read_recording  # noqa: E402
from tests.app.talk.echo_loop import espeak  # noqa: E402
from tests.jack_server import JackPeer, start_jackd  # noqa: E402

QUESTIONS = (
    "Hey, what is two plus three?",
    "What's your name?",
    "Is fire cold?",
    "Can you count from one to four?",
    "How do you spell dog?",
)
RATE, FRAME = 24000, 1920


def converse(
    questions: list[str],
    wait: float,
    folder: Path,
    talk_args: list[str],
    tui: Path | None = None,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Run the app, ask, stop it. Returns the script played into the microphone and where each
    question lies in it (seconds); the app's stderr goes to folder/talk.log (without `tui`)."""
    lines = [espeak(q, "en-us", folder) for q in questions]
    parts, spans, at = [np.zeros(RATE, np.float32)], [], 1.0
    for line in lines:
        spans.append((at, at + len(line) / RATE))
        parts += [line, np.zeros(round(wait * RATE), np.float32)]
        at += len(line) / RATE + wait
    script = np.concatenate(parts)
    server = start_jackd(RATE, FRAME)
    env = {**os.environ, "JACK_DEFAULT_SERVER": server.name, "JACK_NO_START_SERVER": "1"}
    env.pop(MODEL_ENV, None)  # the bundled model, unless talk_args name another
    command = [sys.executable, "-m", "app.cli", "talk", "--record", str(folder / "rec")]
    command += ["--input-device", "system", "--output-device", "system", "--record-microphone"]
    command += talk_args
    try:
        with (
            JackPeer(server, record_seconds=len(script) / RATE + 10) as peer,
            open(folder / "talk.log", "w") as log,
        ):
            if tui is None:
                app = subprocess.Popen(command + ["--no-tui"], cwd=ROOT, env=env, stderr=log)
            else:
                app = in_tmux(command, env, tui, len(script) / RATE)
            try:
                opened = lambda: peer.portaudio_opened() or app.poll() is not None  # noqa: E731
                started = peer.wait_for(opened, 120)
                if app.poll() is not None or not started:
                    raise SystemExit(f"the app never opened its sound devices: {folder}/talk.log")
                time.sleep(0.5)
                peer.connect_portaudio()
                peer.play(script)
                if tui is not None:
                    press_keys_and_capture(tui, len(script) / RATE)
                if not peer.wait_played(timeout=len(script) / RATE + 30):
                    print("the questions did not finish playing in time", file=sys.stderr)
            finally:
                if tui is not None:  # the app ends itself once Textual took its screenshot
                    try:
                        app.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        print("the TUI did not end by itself: stopped", file=sys.stderr)
                    subprocess.run([*TMUX, "kill-server"], stderr=subprocess.DEVNULL)
                app.send_signal(signal.SIGTERM)
                app.wait(timeout=60)
    finally:
        server.stop()
    return script, spans


# A tmux server of its own: it takes its environment from the process that starts it (the
# app's, JACK's server name in it and $ANTIPHON_MODEL out of it), and it cannot clash with the
# user's sessions.
TMUX = ["tmux", "-L", "antiphon-ask"]
TMUX_SESSION = "ask"
SHOT_AFTER = 8.0  # seconds after the questions' script (counted from the UI's start) Textual
# takes its screenshot and then ends the app; the devices open ~2 s after the UI starts, so
# this is ~5 s after press_keys_and_capture took tmux's text of the same screen


def in_tmux(command: list[str], env: dict[str, str], out: Path, seconds: float) -> subprocess.Popen:
    """The app with its TUI in a detached 120x36 tmux window (Textual draws on stderr, so that
    stays the terminal's and talk.log stays empty); Textual saves its own screenshot as
    out/tui.svg and ends the app. Returns a process that lives as long as the app (`tmux
    wait-for` the app's end)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([*TMUX, "kill-server"], stderr=subprocess.DEVNULL)  # an old one's env
    shot = {
        "TEXTUAL_SCREENSHOT": str(round(seconds + SHOT_AFTER)),
        "TEXTUAL_SCREENSHOT_LOCATION": str(out.resolve()),
        "TEXTUAL_SCREENSHOT_FILENAME": "tui.svg",
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
    }
    shell = f"{shlex.join(command)}; {shlex.join([*TMUX, 'wait-for', '-S', TMUX_SESSION])}"
    window = ["new-session", "-d", "-s", TMUX_SESSION, "-x", "120", "-y", "36", shell]
    subprocess.run([*TMUX, *window], cwd=ROOT, env={**env, **shot}, check=True)
    return subprocess.Popen([*TMUX, "wait-for", TMUX_SESSION])


def press_keys_and_capture(out: Path, seconds: float) -> None:
    """`T` 7 s into the questions; once they and the answers are done, tmux's text of the
    screen into out/tui.txt."""
    time.sleep(7)
    subprocess.run([*TMUX, "send-keys", "-t", TMUX_SESSION, "T"], check=True)
    time.sleep(max(seconds - 7 + 1, 0))
    screen = subprocess.run(
        [*TMUX, "capture-pane", "-p", "-t", TMUX_SESSION], capture_output=True, text=True
    )
    if screen.returncode != 0 or not screen.stdout.strip():
        print(f"tmux gave no screen ({screen.stderr.strip()}): no tui.txt", file=sys.stderr)
        return
    (out / "tui.txt").write_text(screen.stdout)


def transcript(
    folder: Path, script: np.ndarray, spans: list[tuple[float, float]], questions: list[str]
) -> list[str]:
    """Each question where it lies in the microphone recording (the script found there by
    cross-correlation) and the model's inner monologue from its end to the next question."""
    recording = read_recording(folder)
    raw, _ = soundfile.read(folder / MICROPHONE_WAV, dtype="float32")  # before the canceller
    n = len(raw) + len(script)
    correlation = np.fft.irfft(np.fft.rfft(raw, n) * np.conj(np.fft.rfft(script, n)), n)
    offset = int(np.argmax(correlation[: len(raw)])) / RATE  # when the script began, rec clock
    frame_s = FRAME / recording.sample_rate
    texts = [  # what the model said
        (e["frame"] * frame_s, e["text"]) for e in recording.events if e["type"] == "text"
    ]
    asked = [(offset + a, offset + b) for a, b in spans]
    out = [f"(before the first question: {_said(texts, 0, asked[0][0])!r})"]
    for i, (question, (a, b)) in enumerate(zip(questions, asked, strict=True)):
        until = asked[i + 1][0] if i + 1 < len(asked) else float("inf")
        out.append(f"[{a:5.1f}-{b:5.1f} s] user:     {question}")
        out.append(f"{'':16s}antiphon: {_said(texts, b - 0.5, until)}")
    return out


def _said(texts: list[tuple[float, str]], start: float, end: float) -> str:
    return " ".join("".join(t for at, t in texts if start <= at < end).split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--question", action="append", help="a question (repeat; default: five)")
    parser.add_argument("--wait", type=float, default=6.0, help="seconds after each question")
    parser.add_argument("--keep", type=Path, help="keep the recording in this folder")
    parser.add_argument(
        "--tui", type=Path, metavar="DIR", help="run the TUI in tmux; its screen into DIR"
    )
    parser.add_argument("talk_args", nargs="*", help="more `antiphon talk` arguments, after --")
    args = parser.parse_args()
    questions = args.question or list(QUESTIONS)
    if args.tui is not None and shutil.which("tmux") is None:
        raise SystemExit("--tui runs the app in tmux: apt-get install tmux")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        script, spans = converse(questions, args.wait, folder, args.talk_args, args.tui)
        said = [line for line in (folder / "talk.log").read_text().splitlines() if line.strip()]
        if said:
            print("antiphon talk printed:\n  " + "\n  ".join(said))
        print("\n".join(transcript(folder / "rec", script, spans, questions)))


if __name__ == "__main__":
    main()
