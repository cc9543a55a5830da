"""Fuzz: generated messages on the volume and results channels of a real server process.

``rtserver serve`` runs as its own process on random loopback ports. A seeded generator
makes ``--messages`` messages for each of its two request channels, in turn: on the volume
channel (a DEALER, as the bridge) random bytes, random JSON, valid headers with one to three
fields replaced or removed, headers with bytes flipped, deep nesting and overlong numbers,
wrong frame counts, headers whose voxel frame is short or random, volumes of the run's grid
with odd voxel values (NaN, infinities, any bit pattern, constants, huge values) and valid
volumes; on the results channel (a REQ) random bytes, random JSON and mutated result and
status requests. Each message waits for its answer. A valid end-of-run message (which
would rightly end the run) is never sent by the generator; the run is ended by one at the
end. It prints:

- messages per second, per channel and in all, and the reply time (median ... max);
- how many messages were answered (and how: recorded, duplicate, error ...), on each channel;
- whether the server was alive before the end-of-run and its exit code;
- the server's resident memory (``/proc/PID/status``) after its first volume and at 10 %,
  50 % and 100 % of the messages;
- the session JSON's size at the end and its counters.

    python benchmarks/fuzz.py [--messages 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import zmq
from _stats import summary
from scipy import ndimage

from rtserver import protocol
from rtserver.errors import ProtocolError
from rtserver.volume import Volume

BIN = Path(sys.executable).parent
ANY_PORT = "tcp://127.0.0.1:*"
LISTENING = re.compile(r"listening: volumes (\S+), feedback (\S+), results (\S+)")
PREFIX = "sub-01_task-regulation_run-1"
REPLY_MS = 30000
VOLUME_FIELDS = ["protocol", "type", "index", "shape", "dtype", "affine", "tr",
                 "t_file_complete", "t_sent", "nbytes", "meta", "n_volumes", "extra"]
ODD_VALUES = [None, -1, 0, 1, 2**31, 2**63, 2**64, protocol.MAX_VOLUMES, 1e308, -0.0, "",
              "volume", "end", "<f4", [], {}, [[]], [32, 32, 20], [32, 32, 1],
              [[1, 0, 0, 0]] * 4, True, math.nan, math.inf]
#: Kinds of volume-channel message and their weights.
VOLUME_KINDS = {"bytes": 15, "json": 15, "mutated": 30, "flipped": 15, "frames": 13,
                "pathological": 6, "odd-voxels": 4, "valid": 2}
#: Kinds of results-channel message and their weights.
RESULT_KINDS = {"bytes": 25, "json": 25, "mutated": 35, "frames": 10, "valid": 5}


def blob_volume() -> Volume:
    """A smooth, head-sized 32x32x20 blob at 3 mm (the tests' ``blob_volume``)."""
    rng = np.random.default_rng(42)
    shape = (32, 32, 20)
    grid = np.indices(shape).astype(np.float64)
    centre = (np.array(shape) - 1) / 2
    radius = np.sqrt((((grid.T - centre) / (np.array(shape) / 2.6)) ** 2).sum(-1)).T
    image = 1000.0 * (radius < 1.0) + 300.0 * ndimage.gaussian_filter(
        rng.normal(size=shape), 1.5) * (radius < 1.0)
    image = ndimage.gaussian_filter(image, 0.8)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -np.array(shape) * 1.5
    return Volume(image.astype(np.float32), affine, index=0, tr=2.0)


class Generator:
    """Seeded messages for both channels, around one valid volume."""

    def __init__(self, seed: int, blob: Volume) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.blob = blob
        self.header = json.loads(bytes(protocol.encode_volume(blob)[0]))
        self.voxels = blob.data.tobytes()
        self.next_index = 1

    # ------------------------------------------------------------------ shared
    def _bytes(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))

    def _text(self) -> str:
        alphabet = "abcdefgh{}[]\":,\\ \u00e9\u2603\x00"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 12)))

    def json_value(self, depth: int = 3):
        """A random JSON value (NaN and infinities included, as a sender could write)."""
        pick = self.rng.randrange(9 if depth > 0 else 7)
        if pick == 0:
            return None
        if pick == 1:
            return self.rng.random() < 0.5
        if pick == 2:
            return self.rng.choice([self.rng.randint(-10, 10), self.rng.randint(-2**70, 2**70)])
        if pick == 3:
            return self.rng.choice([self.rng.uniform(-1e6, 1e6), math.nan, -math.inf, 1e-320])
        if pick in (4, 5):
            return self._text()
        if pick == 6:
            return self.rng.choice(ODD_VALUES)
        if pick == 7:
            return [self.json_value(depth - 1) for _ in range(self.rng.randint(0, 4))]
        return {self._text()[:8]: self.json_value(depth - 1) for _ in range(self.rng.randint(0, 4))}

    @staticmethod
    def _encode(value) -> bytes:
        return json.dumps(value, allow_nan=True).encode()

    def _kind(self, weights: dict[str, int]) -> str:
        return self.rng.choices(list(weights), weights=list(weights.values()))[0]

    # ------------------------------------------------------------------ volume channel
    def volume_message(self) -> tuple[str, list[bytes]]:
        """A message for the volume channel, and its kind."""
        kind = self._kind(VOLUME_KINDS)
        return kind, getattr(self, "_volume_" + kind.replace("-", "_"))()

    def _volume_bytes(self) -> list[bytes]:
        return [self._bytes(300) for _ in range(self.rng.randint(1, 4))]

    def _volume_json(self) -> list[bytes]:
        if self.rng.random() < 0.5:
            body = self.json_value()
        else:
            body = {self.rng.choice(VOLUME_FIELDS): self.json_value(2)
                    for _ in range(self.rng.randint(0, 8))}
        return [self._encode(body)] + [self._bytes(64) for _ in range(self.rng.randint(0, 2))]

    def _volume_mutated(self) -> list[bytes]:
        header = {**self.header, "index": self.next_index}
        for _ in range(self.rng.randint(1, 3)):
            name = self.rng.choice(VOLUME_FIELDS)
            if self.rng.random() < 0.5 and name in header:
                del header[name]
            else:
                header[name] = self.rng.choice([self.rng.choice(ODD_VALUES), self.json_value(2)])
        voxels = self.rng.choice(["good", "short", "random"])
        if voxels == "good":
            buffer = self.voxels
        elif voxels == "short":
            buffer = self.voxels[: self.rng.randrange(len(self.voxels))]
        else:
            buffer = self.rng.randbytes(len(self.voxels))
        return [self._encode(header), buffer]

    def _volume_flipped(self) -> list[bytes]:
        raw = bytearray(self._encode({**self.header, "index": self.next_index}))
        for _ in range(self.rng.randint(1, 4)):
            raw[self.rng.randrange(len(raw))] = self.rng.randrange(256)
        return [bytes(raw), self.voxels]

    def _volume_frames(self) -> list[bytes]:
        good = [self._encode({**self.header, "index": self.next_index}), self.voxels]
        frames = good[: self.rng.randint(1, 2)]
        return frames + [self._bytes(32) for _ in range(self.rng.randint(0, 3))]

    def _volume_pathological(self) -> list[bytes]:
        raw = self._encode({**self.header, "index": self.next_index})
        pick = self.rng.randrange(4)
        if pick == 0:
            depth = self.rng.choice([100, 1000, 30000])
            return [b'{"protocol":"rtfmri/1","type":"volume","x":' + b"[" * depth
                    + b"]" * depth + b"}", self.voxels]
        if pick == 1:
            digits = b"7" * self.rng.choice([20, 5000, 60000])
            return [raw.replace(b'"index": ', b'"index": ' + digits, 1), self.voxels]
        if pick == 2:
            return [b"{" * self.rng.choice([1000, 70000])]
        return [raw + b" " * 70000, self.voxels]  # over the header limit

    def _volume_odd_voxels(self) -> list[bytes]:
        shape = tuple(self.header["shape"])
        dtype = self.rng.choice(["<f4", ">f4", "<f8", "<i2", "|u1"])
        fill = self.rng.choice(["bytes", "nan", "inf", "zero", "constant", "huge", "noise",
                                "half-nan", "one-slice"])
        if fill == "bytes":
            data = np.frombuffer(self.rng.randbytes(math.prod(shape) * np.dtype(dtype).itemsize),
                                 dtype)
        else:
            data = self.np_rng.normal(1000.0, 100.0, shape)
            if fill == "one-slice":
                data[:, :, 1:] = 0.0
            values = {"nan": np.nan, "inf": -np.inf, "zero": 0.0, "constant": 7.0, "huge": 3e38}
            if fill in values:
                data[...] = values[fill]
            elif fill == "half-nan":
                data[: shape[0] // 2] = np.nan
            with np.errstate(invalid="ignore", over="ignore"):
                data = data.astype(dtype)
        header = {**self.header, "index": self._new_index(), "dtype": dtype,
                  "nbytes": int(data.nbytes)}
        return [self._encode(header), data.tobytes()]

    def _volume_valid(self) -> list[bytes]:
        noise = self.np_rng.normal(0.0, 5.0, self.blob.shape).astype(np.float32)
        volume = Volume(self.blob.data + noise, self.blob.affine, index=self._new_index(),
                        tr=self.blob.tr)
        return [bytes(frame) for frame in protocol.encode_volume(volume)]

    def _new_index(self) -> int:
        """An index not used before (mutated messages reuse the next one: most are refused)."""
        index = self.next_index
        self.next_index = min(self.next_index + 1, protocol.MAX_VOLUMES - 1)
        return index

    # ------------------------------------------------------------------ results channel
    def results_message(self) -> tuple[str, list[bytes]]:
        """A message for the results channel, and its kind."""
        kind = self._kind(RESULT_KINDS)
        if kind == "bytes":
            return kind, [self._bytes(200) for _ in range(self.rng.randint(1, 4))]
        if kind == "json":
            return kind, [self._encode(self.json_value())]
        good = {"protocol": protocol.PROTOCOL,
                "type": self.rng.choice(["result_request", "status_request"]),
                "volume": self.rng.randint(-2, self.next_index)}
        if kind == "valid":
            return kind, [self._encode(good)]
        if kind == "frames":
            return kind, [self._encode(good)] + [self._bytes(16)
                                                  for _ in range(self.rng.randint(1, 3))]
        good[self.rng.choice(["protocol", "type", "volume", "extra"])] = self.rng.choice(
            [self.rng.choice(ODD_VALUES), self.json_value(2)])
        return kind, [self._encode(good)]


def ends_the_run(frames: list[bytes]) -> bool:
    """True for a valid end-of-run message (which would rightly stop the server)."""
    try:
        header = protocol.parse_header(frames[0], [protocol.END])
        protocol.decode_end(header)
    except ProtocolError:
        return False
    return len(frames) == 1


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (MB), or None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024.0 if match else None


def wait_for_endpoints(log: Path, server: subprocess.Popen, timeout: float = 60.0) -> tuple:
    """The endpoints the server logs once it is listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return match.groups()
        if server.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"the server never printed its endpoints:\n{log.read_text()}")


class Channel:
    """One client socket that sends a message and waits for its answer."""

    def __init__(self, context: zmq.Context, kind: int, endpoint: str) -> None:
        self.context, self.kind, self.endpoint = context, kind, endpoint
        self.socket = self._connect()
        self.answers: Counter = Counter()
        self.reply_ms: list[float] = []
        self.n_sent = 0
        self.n_unanswered = 0

    def _connect(self) -> zmq.Socket:
        sock = self.context.socket(self.kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def ask(self, frames: list[bytes]) -> dict | None:
        """Send ``frames``; return the decoded answer (None when none came)."""
        self.n_sent += 1
        started = time.perf_counter()
        self.socket.send_multipart(frames)
        if not self.socket.poll(REPLY_MS):
            self.n_unanswered += 1
            self.socket.close()  # a REQ without its reply cannot send again; start afresh
            self.socket = self._connect()
            return None
        raw = self.socket.recv_multipart()[-1]
        self.reply_ms.append((time.perf_counter() - started) * 1000.0)
        try:
            reply = protocol.parse_header(raw, [protocol.ACK, protocol.ERROR, protocol.RESULT,
                                                protocol.STATUS])
        except ProtocolError:
            self.answers["undecodable"] += 1
            return None
        self.answers[reply.get("status") or reply["type"]] += 1
        return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000,
                        help="messages per channel (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = parser.parse_args()
    blob = blob_volume()
    generator = Generator(args.seed, blob)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out, log = tmp / "out", tmp / "server.log"
        with log.open("wb") as log_handle:
            server = subprocess.Popen(
                [str(BIN / "rtserver"), "serve", "--out", str(out), "--volumes", ANY_PORT,
                 "--feedback", ANY_PORT, "--results", ANY_PORT], stderr=log_handle)
        context = zmq.Context()
        try:
            volumes_endpoint, _, results_endpoint = wait_for_endpoints(log, server)
            volumes = Channel(context, zmq.DEALER, volumes_endpoint)
            results = Channel(context, zmq.REQ, results_endpoint)
            first = volumes.ask([bytes(f) for f in protocol.encode_volume(blob)])
            assert first is not None and first.get("status") == "recorded", first
            rss = {"after the first volume": rss_mb(server.pid)}
            checkpoints = {max(1, args.messages // 10): "10 %", max(1, args.messages // 2): "50 %",
                           args.messages: "100 %"}
            kinds: Counter = Counter()
            started = time.perf_counter()
            for k in range(1, args.messages + 1):
                kind, frames = generator.volume_message()
                while ends_the_run(frames):
                    kind, frames = generator.volume_message()
                kinds[kind] += 1
                volumes.ask(frames)
                results.ask(generator.results_message()[1])
                if k in checkpoints:
                    rss[checkpoints[k]] = rss_mb(server.pid)
                    print(f"  {k:>7d} messages per channel, {time.perf_counter() - started:7.1f} s,"
                          f" server RSS {rss[checkpoints[k]]:.1f} MB", flush=True)
            seconds = time.perf_counter() - started
            alive = server.poll() is None
            status = results.ask([protocol.encode_status_request()])
            end = volumes.ask(protocol.encode_end(generator.next_index))
            code = server.wait(timeout=120)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            context.destroy(linger=0)
        session_path = out / f"{PREFIX}_desc-session.json"
        session = json.loads(session_path.read_text())
        report(args, seconds, volumes, results, kinds, rss, alive, status, end, code,
               session_path.stat().st_size, session, log)


def report(args, seconds, volumes, results, kinds, rss, alive, status, end, code,
           session_bytes, session, log) -> None:
    """Print the figures."""
    n = args.messages
    print(f"\nfuzz: {n} generated messages per channel (seed {args.seed}) against "
          f"`rtserver serve`, each waited for")
    print(f"  throughput: {2 * n / seconds:.0f} messages/s in all ({n / seconds:.0f} per "
          f"channel), {seconds:.1f} s")
    print("  volume-channel kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    for name, channel in (("volume channel", volumes), ("results channel", results)):
        answered = sum(channel.answers.values())
        print(f"  {name}: {answered} of {channel.n_sent} answered, "
              f"{channel.n_unanswered} unanswered; "
              + ", ".join(f"{k} {v}" for k, v in channel.answers.most_common()))
        print("    " + summary(channel.reply_ms, label="reply time", width=11))
    print(f"  server alive after the messages: {'yes' if alive else 'NO'}; status answered: "
          f"{'yes' if status and status.get('type') == 'status' else 'NO'}; end-of-run "
          f"answered: {end.get('status') if end else 'NO'}; exit code {code}")
    print("  server RSS: " + ", ".join(f"{k} {v:.1f} MB" for k, v in rss.items()
                                       if v is not None))
    counters = {k: session.get(k) for k in ("status", "n_received", "n_processed",
                                            "n_duplicates", "n_malformed", "n_rejected",
                                            "n_withheld", "n_nonfinite_volumes")}
    print(f"  session JSON: {session_bytes} bytes; " + ", ".join(
        f"{k} {v}" for k, v in counters.items()))
    tracebacks = log.read_text(errors="replace").count("Traceback")
    print(f"  server log: {log.stat().st_size} bytes, {tracebacks} tracebacks")


if __name__ == "__main__":
    main()
