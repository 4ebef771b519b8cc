"""How many real-time conversations one `antiphon serve` node sustains, and what MQTT adds.

    python scripts/load_serve.py                          # tiny random model, CPU, 1..16 sessions
    python scripts/load_serve.py --sessions 1 4 8 --seconds 20 --json load.json
    python scripts/load_serve.py --device cuda --hf-repo kyutai/moshiko-pytorch-bf16

For each number of sessions N, a node (`python -m app.serve`, a process of its own) is started
with N slots, and N clients (one MQTT connection each, in this process) send a frame every 80 ms
on their own phase, in s16, as a microphone would, for --seconds. Reported per N:

- step: the node's batched step (BatchEngine.step in its torch thread), median and p99, from its
  metrics topic. Real time needs p99 < 80 ms and no dropped frames;
- node: a frame's arrival at the node to its reply handed to MQTT (waiting for the batch, the
  step, encoding the reply), from the replies' headers;
- mqtt: the round trip seen by the client minus the node's time: client -> broker -> node and
  node -> broker -> client, i.e. what the MQTT hop adds;
- dropped: frames sent and never answered, plus frames the node dropped.

Also the broker's own round trip (a 3.9 kB QoS 0 message to itself), without any node. Without
--broker a private mosquitto is started on a free loopback port (tests/mosquitto.py), with
TCP_NODELAY. Clients and node share the machine, as they share the CPU: on a small box the
clients' own cost is part of what is measured.

The soak (`--soak`): N sessions (default 16) for --minutes (default 10) against one node, with a
line of progress every 10 s and, per minute, the node's resident memory and how late the
replies come. It passes when the memory at the end is within 5 % of minute 1, the frame clock
drifts less than a frame (the median lateness of the replies, last minute against the first:
the node falls no further behind the clients' clocks), no session was dropped and less than
1 % of the frames went unanswered (a node slower than real time keeps its clock by dropping):

    python scripts/load_serve.py --soak                          # 16 sessions, 10 minutes
    python scripts/load_serve.py --soak --sessions 4 --minutes 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.talk.devices import generated_user_signal  # noqa: E402
from app.wire.client import request_session  # noqa: E402
from app.wire.mqtt import BrokerSettings, call, make_client  # noqa: E402
from app.wire.protocol import AudioFrame, SampleFormat, decode_audio, encode_audio  # noqa: E402

FRAME, RATE = 1920, 24000
PERIOD = FRAME / RATE


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def broker_round_trip(settings: BrokerSettings, count: int = 200) -> dict[str, Any]:
    """A frame-sized QoS 0 message from a client to itself through the broker."""
    topic = f"load/echo/{secrets.token_hex(4)}"
    payload = bytes(28 + 2 * FRAME)
    times: list[float] = []
    async with make_client(settings) as client:
        await call(client.subscribe(topic, qos=0))
        messages = client.messages
        for _ in range(count):
            start = time.perf_counter()
            await call(client.publish(topic, payload))
            await anext(messages)
            times.append(1000 * (time.perf_counter() - start))
            await asyncio.sleep(0.005)
    return {"median_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}


class Caller:
    """One conversation: frames out on a fixed schedule, replies timed as they come back."""

    def __init__(self, settings: BrokerSettings, index: int, audio: np.ndarray) -> None:
        self.settings = settings
        self.index = index
        self.audio = audio
        self.sent: dict[int, float] = {}
        self.rtt_ms: list[float] = []
        self.node_ms: list[float] = []
        self.mqtt_ms: list[float] = []
        self.late_sends = 0
        self.answered_at: list[tuple[float, float]] = []  # (monotonic, lateness ms) per reply
        self.closed: str | None = None  # why the node closed the session, if it did
        self.frames = 0  # sent so far

    async def run(self, node: str, seconds: float, start: float) -> None:
        owner = f"load-{self.index}-{secrets.token_hex(3)}"
        async with make_client(self.settings, client_id=owner) as client:
            grant = await request_session(client, "antiphon", owner, node=node)
            await call(client.subscribe(grant.topics.out, qos=0))
            frames = int(seconds / PERIOD)
            phase = (self.index * 0.013) % PERIOD  # clients' microphones are not in step
            self.due = lambda i: start + phase + (i + 1) * PERIOD  # when frame i is captured
            receiving = asyncio.create_task(self._receive(client))
            try:
                for i in range(frames):
                    due = start + phase + (i + 1) * PERIOD
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif delay < -PERIOD / 2:
                        self.late_sends += 1
                    pcm = self.audio[(i * FRAME) % (len(self.audio) - FRAME) :][:FRAME]
                    self.sent[i] = time.perf_counter()
                    frame = encode_audio(AudioFrame(i, pcm, SampleFormat.S16))
                    await call(client.publish(grant.topics.in_audio, frame))
                    self.frames = i + 1
                await asyncio.sleep(1.0)  # the last replies
            finally:
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving
                await call(client.publish(grant.topics.ctl, b'{"cmd":"close"}', qos=1))

    async def _receive(self, client: Any) -> None:
        async for message in client.messages:
            now = time.perf_counter()
            if not message.topic.value.endswith("/out/audio"):
                event = json.loads(message.payload)
                if event.get("type") == "state" and event.get("state") == "closed":
                    self.closed = event.get("detail", "closed")
                continue
            reply = decode_audio(message.payload, FRAME)
            arrived = time.monotonic()
            self.answered_at.append((arrived, 1000 * (arrived - self.due(reply.sequence))))
            sent = self.sent.pop(reply.sequence, None)
            if sent is None:
                continue
            rtt = 1000 * (now - sent)
            self.rtt_ms.append(rtt)
            self.node_ms.append(reply.node_us / 1000)
            self.mqtt_ms.append(rtt - reply.node_us / 1000)


async def node_metrics(settings: BrokerSettings, node: str) -> dict[str, Any]:
    async with make_client(settings) as client:
        await call(client.subscribe(f"antiphon/{node}/metrics", qos=1))
        async with asyncio.timeout(5):
            message = await anext(client.messages)
    return json.loads(message.payload)  # type: ignore[arg-type]


async def wait_online(settings: BrokerSettings, node: str, process: subprocess.Popen) -> None:
    async with make_client(settings) as client:
        await call(client.subscribe(f"antiphon/{node}/status", qos=1))
        async with asyncio.timeout(120):
            async for message in client.messages:
                if message.payload == b"online":
                    return
                if process.poll() is not None:
                    raise RuntimeError("the node exited at start")


async def level(
    settings: BrokerSettings, url: str, sessions: int, seconds: float, model_args: list[str]
) -> dict[str, Any]:
    node = f"load-{sessions}"
    command = [sys.executable, "-m", "app.serve", "--broker", url, "--node", node]
    command += ["--slots", str(sessions), "--session-timeout", "5", *model_args]
    if settings.username:
        command += ["--username", settings.username]
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        await wait_online(settings, node, process)
        audio = generated_user_signal(6.0, RATE)
        callers = [Caller(settings, i, audio) for i in range(sessions)]
        start = time.monotonic() + 1.0
        async with asyncio.TaskGroup() as tasks:
            for caller in callers:
                tasks.create_task(caller.run(node, seconds, start))
        await asyncio.sleep(1.2)  # the node publishes its metrics once a second
        metrics = await node_metrics(settings, node)
    finally:
        process.terminate()
        process.wait(timeout=30)
    sent = sum(int(seconds / PERIOD) for _ in callers)
    answered = sum(len(c.rtt_ms) for c in callers)

    def gather(name: str) -> list[float]:
        return [v for c in callers for v in getattr(c, name)]

    result = {
        "sessions": sessions,
        "frames_sent": sent,
        "frames_answered": answered,
        "frames_dropped_by_node": metrics["frames_dropped"],
        "late_sends": sum(c.late_sends for c in callers),
        "step_ms_median": metrics["step_ms_median"],
        "step_ms_p99": metrics["step_ms_p99"],
        "node_ms_median": percentile(gather("node_ms"), 50),
        "node_ms_p99": percentile(gather("node_ms"), 99),
        "mqtt_ms_median": percentile(gather("mqtt_ms"), 50),
        "mqtt_ms_p99": percentile(gather("mqtt_ms"), 99),
        "rtt_ms_median": percentile(gather("rtt_ms"), 50),
        "rtt_ms_p99": percentile(gather("rtt_ms"), 99),
    }
    result["real_time"] = bool(
        answered == sent
        and metrics["frames_dropped"] == 0
        and result["step_ms_p99"] is not None
        and result["step_ms_p99"] < 1000 * PERIOD
    )
    return result


def show(result: dict[str, Any]) -> None:
    def f(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(
        f"{result['sessions']:>4} {f(result['step_ms_median']):>7} {f(result['step_ms_p99']):>7}"
        f" {f(result['node_ms_median']):>7} {f(result['node_ms_p99']):>7}"
        f" {f(result['mqtt_ms_median']):>7} {f(result['mqtt_ms_p99']):>7}"
        f" {result['frames_sent'] - result['frames_answered']:>5}"
        f" {result['frames_dropped_by_node']:>5}  {'yes' if result['real_time'] else 'NO'}",
        flush=True,
    )


def resident_mb(pid: int) -> float:
    """The process's resident memory (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def soak(
    settings: BrokerSettings, url: str, sessions: int, minutes: float, model_args: list[str]
) -> dict[str, Any]:
    """`sessions` conversations for `minutes` against one node: memory, drift, drops."""
    node = f"soak-{sessions}"
    command = [sys.executable, "-m", "app.serve", "--broker", url, "--node", node]
    command += ["--slots", str(sessions), "--session-timeout", "5", *model_args]
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL)
    seconds = 60 * minutes
    rows: list[dict[str, Any]] = []
    try:
        await wait_online(settings, node, process)
        audio = generated_user_signal(6.0, RATE)
        callers = [Caller(settings, i, audio) for i in range(sessions)]
        start = time.monotonic() + 1.0
        talking = [asyncio.create_task(c.run(node, seconds, start)) for c in callers]
        print(f"soak: {sessions} sessions for {minutes:g} min on node pid {process.pid}")
        print(" minute  node RSS MB  lateness ms median  p99   answered  lost  dropped")
        tick = 0
        while not all(t.done() for t in talking):
            tick += 1
            await asyncio.sleep(max(0.0, start + 10 * tick - time.monotonic()))
            if process.poll() is not None:
                raise RuntimeError(f"the node exited (status {process.returncode})")
            elapsed = time.monotonic() - start
            sent = sum(c.frames for c in callers)
            answered = sum(len(c.answered_at) for c in callers)
            if tick % 6:
                print(f"  {elapsed:5.0f} s: {answered}/{sent} frames answered", flush=True)
                continue
            window = [
                late for c in callers for at, late in c.answered_at if at >= elapsed - 60 + start
            ]
            row = {
                "minute": tick // 6,
                "rss_mb": resident_mb(process.pid),
                "lateness_ms_median": percentile(window, 50),
                "lateness_ms_p99": percentile(window, 99),
                "answered": answered,
                "lost": sum(max(0, c.frames - len(c.answered_at) - 2) for c in callers),
                "dropped_sessions": sum(c.closed is not None for c in callers),
            }
            rows.append(row)
            median, p99 = row["lateness_ms_median"] or 0, row["lateness_ms_p99"] or 0
            print(
                f" {row['minute']:6d}  {row['rss_mb']:11.1f}  {median:19.1f}  {p99:5.1f}"
                f"  {answered:9d}  {row['lost']:4d}"
                f"  {row['dropped_sessions']:7d}",
                flush=True,
            )
        for task in talking:
            with contextlib.suppress(Exception):
                task.result()
        failed = [t for t in talking if t.exception() is not None]
    finally:
        process.terminate()
        process.wait(timeout=30)
    first, last = rows[0], rows[-1]
    growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
    drift = (last["lateness_ms_median"] - first["lateness_ms_median"]) / (1000 * PERIOD)
    dropped = sum(c.closed is not None for c in callers) + len(failed)
    result = {
        "sessions": sessions,
        "minutes": minutes,
        "per_minute": rows,
        "rss_growth": growth,
        "drift_frames": drift,
        "sessions_dropped": dropped,
        "frames_sent": sum(c.frames for c in callers),
        "frames_answered": sum(len(c.answered_at) for c in callers),
    }
    lost = 1 - result["frames_answered"] / max(1, result["frames_sent"])
    # A node that cannot keep up (a busy machine) loses frames but keeps its clock: that fails too.
    result["passed"] = abs(growth) <= 0.05 and abs(drift) < 1 and dropped == 0 and lost < 0.01
    print(
        f"memory: {first['rss_mb']:.1f} MB at minute 1, {last['rss_mb']:.1f} MB at minute "
        f"{last['minute']} ({100 * growth:+.1f} %, limit 5 %); frame clock drift "
        f"{drift:+.2f} frames (limit 1); sessions dropped {dropped}; frames answered "
        f"{result['frames_answered']} of {result['frames_sent']} ({100 * lost:.1f} % lost, "
        "limit 1 %): " + ("PASSED" if result["passed"] else "FAILED")
    )
    return result


async def main(args: argparse.Namespace, model_args: list[str]) -> int:
    broker = None
    url = args.broker
    if url is None:
        from tests.mosquitto import Mosquitto

        broker = Mosquitto(Path(tempfile.mkdtemp(prefix="antiphon-load-")))
        broker.start()
        url = broker.url
    host, port = url.removeprefix("mqtt://").split(":")
    settings = BrokerSettings(
        host, int(port), username=args.username, password=os.environ.get("ANTIPHON_MQTT_PASSWORD")
    )
    if args.soak:
        if args.minutes < 1:
            raise SystemExit("--minutes: at least 1 (memory is compared with minute 1)")
        try:
            sessions = args.sessions[0] if args.sessions else 16
            result = await soak(settings, url, sessions, args.minutes, model_args)
        finally:
            if broker is not None:
                broker.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0 if result["passed"] else 1
    try:
        echo = await broker_round_trip(settings)
        print(
            f"broker round trip (frame-sized QoS 0 to itself): median {echo['median_ms']:.2f} ms, "
            f"p99 {echo['p99_ms']:.2f} ms"
        )
        print(
            "   N   step ms p99      node ms p99      mqtt ms p99  lost  drop  real time\n"
            "      (median)        (median)         (median)"
        )
        results = []
        for sessions in args.sessions or [1, 2, 4, 8, 12, 16]:
            result = await level(settings, url, sessions, args.seconds, model_args)
            show(result)
            results.append(result)
    finally:
        if broker is not None:
            broker.stop()
    sustained = [r["sessions"] for r in results if r["real_time"]]
    print(f"most sessions in real time: {max(sustained) if sustained else 0}")
    if args.json:
        Path(args.json).write_text(json.dumps({"broker": echo, "levels": results}, indent=2))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", help="mqtt://host:port (default: a private mosquitto)")
    parser.add_argument("--username", help="broker username (password: $ANTIPHON_MQTT_PASSWORD)")
    parser.add_argument(
        "--sessions", type=int, nargs="+", help="default 1 2 4 8 12 16; with --soak, one (16)"
    )
    parser.add_argument("--soak", action="store_true", help="one level for --minutes (above)")
    parser.add_argument("--minutes", type=float, default=10.0, help="of the soak (default 10)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per level (default 10)")
    parser.add_argument("--json", help="write every figure here")
    known, rest = parser.parse_known_args()  # the rest goes to the node: model options
    sys.exit(asyncio.run(main(known, rest)))
