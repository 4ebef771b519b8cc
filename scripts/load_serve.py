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

    async def run(self, node: str, seconds: float, start: float) -> None:
        owner = f"load-{self.index}-{secrets.token_hex(3)}"
        async with make_client(self.settings, client_id=owner) as client:
            grant = await request_session(client, "antiphon", owner, node=node)
            await call(client.subscribe(grant.topics.out_audio, qos=0))
            receiving = asyncio.create_task(self._receive(client))
            frames = int(seconds / PERIOD)
            phase = (self.index * 0.013) % PERIOD  # clients' microphones are not in step
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
                await asyncio.sleep(1.0)  # the last replies
            finally:
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving
                await call(client.publish(grant.topics.ctl, b'{"cmd":"close"}', qos=1))

    async def _receive(self, client: Any) -> None:
        async for message in client.messages:
            now = time.perf_counter()
            reply = decode_audio(message.payload, FRAME)
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
        for sessions in args.sessions:
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
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="per level (default 10)")
    parser.add_argument("--json", help="write every figure here")
    known, rest = parser.parse_known_args()  # the rest goes to the node: model options
    sys.exit(asyncio.run(main(known, rest)))
