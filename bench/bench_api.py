"""Verification over HTTP vs in process, side by side in one run: requests/s and p50 / p95 latency
of `POST /v1/verify` on a real `faceverify api` server (a subprocess on a free loopback port, a
fresh temporary gallery, a key with the verify scope and a rate limit too high to interfere), once
per `--workers` setting, beside `Verifier().verify(bytes_a, bytes_b)` called from as many threads
in this process, at each concurrency. Both sides verify the same LFW pairs, read into memory once
and cycled (JPEG bytes: each side decodes, detects, aligns, embeds, scores), after a warm-up at
that concurrency; each level's requests are measured in rounds, the paths taking turns, so load
from elsewhere on the machine falls on every path alike (the run ends saying how busy other
processes kept the CPUs). CPU ms/request: this process's CPU time per request for the in-process
rows, the server's plus this process's (the HTTP client's) for the HTTP rows, so the difference is
what HTTP costs on the same cores. A probe then times what a request costs the server without
inference (the key check, multipart parsing, the inference pool's hop, the JSON error).

    python bench/bench_api.py [--requests 96] [--rounds 3] [--concurrency 1 4 16] [--workers 1 2 4]
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import LFW, table
from faceverify.errors import FaceVerifyError
from faceverify.verifier import Verifier

CLI = [sys.executable, "-m", "faceverify.cli"]
ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def lfw_pairs(verifier: Verifier, n: int) -> list[tuple[bytes, bytes]]:
    """`n` pairs of JPEG bytes, half of one person's two photos, half of two people's, spread over
    LFW's identities; only pairs the verifier takes as they are (one face each, default policy),
    so neither side answers an error."""
    people = sorted(p for p in LFW.iterdir() if len(list(p.glob("*.jpg"))) >= 2)
    people = people[::max(1, len(people) // (4 * n))]
    pairs = []
    for i, person in enumerate(people):
        first, second = sorted(person.glob("*.jpg"))[:2]
        other = sorted(people[(i + len(people) // 2) % len(people)].glob("*.jpg"))[0]
        pair = (first.read_bytes(), (second if len(pairs) % 2 == 0 else other).read_bytes())
        try:
            verifier.verify(*pair)
        except FaceVerifyError:
            continue
        pairs.append(pair)
        if len(pairs) == n:
            break
    return pairs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system, every thread) of this process, or of process `pid`."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        try:
            import psutil

            times = psutil.Process(pid).cpu_times()
            return times.user + times.system
        except Exception:
            return None


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (Linux; None elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and its children waited for (the servers, once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Server:
    """`faceverify api` on a free loopback port, waited for until /v1/health answers."""

    def __init__(self, gallery: Path, workers: int, queue: int, log: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [*CLI, "api", "--gallery", str(gallery), "--port", str(self.port), "--workers", str(workers),
             "--queue", str(queue), "--rate", "100000", "--burst", "100000"],
            stdout=self.log, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"faceverify api exited ({self.process.returncode}); see {log}:\n"
                                 + log.read_text()[-2000:])
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"faceverify api did not answer in 180 s; see {log}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def http_caller(url: str, key: str, pairs):
    """A verify call over HTTP (multipart); raises on any status but 200. Each call borrows a
    keep-alive client from a pool that outlives the threads of one measurement: a new
    `httpx.Client` loads a CA bundle (~25 ms of CPU, even for plain HTTP), which a client made per
    thread would charge to HTTP at every measurement."""
    import queue

    import httpx

    idle: queue.SimpleQueue = queue.SimpleQueue()

    def call(i: int) -> None:
        try:
            client = idle.get_nowait()
        except queue.Empty:
            client = httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {key}"})
        a, b = pairs[i % len(pairs)]
        try:
            r = client.post("/v1/verify", files={"image_a": ("a.jpg", a, "image/jpeg"),
                                                 "image_b": ("b.jpg", b, "image/jpeg")})
        finally:
            idle.put(client)
        if r.status_code != 200:
            raise RuntimeError(f"/v1/verify answered {r.status_code}: {r.text[:300]}")
    return call


def run_calls(call, concurrency: int, count: int) -> list[float]:
    """`count` calls of `call(i)` from `concurrency` threads, each taking the next i: their latencies."""
    taken, lock, latencies = iter(range(count)), threading.Lock(), []

    def worker() -> None:
        while True:
            with lock:
                i = next(taken, None)
            if i is None:
                return
            start = time.perf_counter()
            call(i)
            latencies.append(time.perf_counter() - start)
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return latencies


def measure(paths: dict, concurrency: int, requests: int, warmup: int, rounds: int) -> dict:
    """Each path's `call(i)` (`paths`: name → (call, server pid or None)) at `concurrency`, after
    `warmup` calls; `requests` calls in all, in `rounds` slices taken in turn, the order of the
    paths rotated every round, so load from elsewhere on the machine falls on every path alike.
    Per path: requests/s, latency percentiles, CPU ms per request (this process + the server)."""
    names = list(paths)
    for call, _ in paths.values():
        run_calls(call, concurrency, warmup)
    done = {name: {"wall": 0.0, "latencies": [], "cpu": 0.0, "client_cpu": 0.0, "known": True} for name in names}
    sizes = [requests // rounds + (r < requests % rounds) for r in range(rounds)]
    for r, size in enumerate(sizes):
        for name in names[r % len(names):] + names[:r % len(names)]:
            call, pid = paths[name]
            before = [cpu_seconds(), cpu_seconds(pid) if pid else 0.0]
            start = time.perf_counter()
            latencies = run_calls(call, concurrency, size)
            wall = time.perf_counter() - start
            after = [cpu_seconds(), cpu_seconds(pid) if pid else 0.0]
            d = done[name]
            d["wall"] += wall
            d["latencies"] += latencies
            if None in before + after:
                d["known"] = False
            else:
                d["cpu"] += (after[0] - before[0]) + (after[1] - before[1])
                d["client_cpu"] += after[0] - before[0]
    out = {}
    for name, d in done.items():
        q = statistics.quantiles(d["latencies"], n=20, method="inclusive")
        out[name] = {"rps": requests / d["wall"], "p50": 1000 * statistics.median(d["latencies"]),
                     "p95": 1000 * q[18], "cpu": 1000 * d["cpu"] / requests if d["known"] else None,
                     "client_cpu": 1000 * d["client_cpu"] / requests}
    return out


def probe(server: Server, key: str, requests: int) -> list[list]:
    """What a request costs the server with no inference, one at a time: the health check (no
    key), the model's card (a key checked: the gallery opened, its keys read), and /v1/verify with
    two small non-images (key, rate limit, multipart parsing, the pool's hop, a 415)."""
    import httpx

    rows = []
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        for name, send, wanted in [
            ("GET /v1/health (no key)", lambda: client.get("/v1/health"), 200),
            ("GET /v1/model (key checked)", lambda: client.get("/v1/model"), 200),
            ("POST /v1/verify, two 1 KB non-images (→ 415)",
             lambda: client.post("/v1/verify", files={"image_a": ("a.jpg", b"x" * 1024, "image/jpeg"),
                                                      "image_b": ("b.jpg", b"y" * 1024, "image/jpeg")}), 415),
        ]:
            for _ in range(5):
                send()
            cpu, times = cpu_seconds(server.process.pid), []
            for _ in range(requests):
                start = time.perf_counter()
                r = send()
                times.append(time.perf_counter() - start)
                if r.status_code != wanted:
                    raise RuntimeError(f"{name}: {r.status_code} {r.text[:200]}")
            used = cpu_seconds(server.process.pid)
            rows.append([name, 1000 * statistics.median(times),
                         "n/a" if cpu is None or used is None else 1000 * (used - cpu) / requests])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96, help="measured requests per level and path")
    parser.add_argument("--rounds", type=int, default=3,
                        help="slices the requests are measured in, the paths taking turns (evens out other load)")
    parser.add_argument("--warmup", type=int, default=8,
                        help="calls before each measurement (at least the concurrency)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="server --workers settings to try")
    parser.add_argument("--pairs", type=int, default=20, help="LFW photo pairs, cycled")
    parser.add_argument("--probe", type=int, default=50, help="requests per no-inference probe (0: skip)")
    args = parser.parse_args()

    busy, own, began = machine_busy_seconds(), own_seconds(), time.perf_counter()
    verifier = Verifier()
    pairs = lfw_pairs(verifier, args.pairs)
    print(f"{len(pairs)} LFW pairs ({sum(len(a) + len(b) for a, b in pairs) / len(pairs) / 1024:.0f} KB a "
          f"request), {verifier.detector_name} + {verifier.metadata.arch}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "bench.db"
        made = subprocess.run([*CLI, "keys", "add", "bench", "--scope", "verify", "--gallery", str(gallery)],
                              capture_output=True, text=True, env=ENV)
        if made.returncode:
            raise SystemExit(f"faceverify keys add failed: {made.stderr.strip()[-2000:]}")
        key = made.stdout.split()[-1]
        queue = max(32, max(args.concurrency))  # every request waits for a worker: none is refused 503
        servers = {}
        try:
            for workers in args.workers:  # all started first: idle ones sleep while another is measured
                print(f"starting faceverify api --workers {workers} ...", flush=True)
                servers[workers] = Server(gallery, workers, queue, Path(tmp) / f"api-{workers}.log")
            rows, kept = [], {}
            for concurrency in args.concurrency:
                print(f"concurrency {concurrency}: in process and HTTP at --workers "
                      f"{', '.join(map(str, servers))}, {args.rounds} rounds ...", flush=True)
                paths = {"in process": (lambda i: verifier.verify(*pairs[i % len(pairs)]), None)}
                label = {f"HTTP, --workers {workers}": workers for workers in servers}
                for name, workers in label.items():
                    paths[name] = (http_caller(servers[workers].url, key, pairs), servers[workers].process.pid)
                got = measure(paths, concurrency, args.requests, max(args.warmup, concurrency), args.rounds)
                local = got["in process"]
                for name, m in got.items():
                    if name == "in process":
                        cpu, ratio = m["cpu"], "1 (baseline)"
                    else:
                        workers = label[name]
                        kept[concurrency, workers] = m["rps"] / local["rps"]
                        cpu = "n/a" if m["cpu"] is None else f"{m['cpu']:.4g} (client {m['client_cpu']:.2g})"
                        ratio = f"{kept[concurrency, workers]:.2f}"
                    rows.append([concurrency, name, m["rps"], m["p50"], m["p95"], cpu, ratio])
            table(f"POST /v1/verify over HTTP vs Verifier.verify in process, {args.requests} requests a "
                  f"level, {len(pairs)} LFW pairs cycled, {os.cpu_count()} CPUs",
                  ["concurrency", "path", "requests/s", "p50 ms", "p95 ms", "CPU ms/request", "HTTP / in process"],
                  rows)
            if args.probe:
                workers = next(iter(servers))
                table(f"server cost of a request without inference (--workers {workers}, one at a time, "
                      f"{args.probe} requests)", ["request", "latency ms (p50)", "server CPU ms/request"],
                      probe(servers[workers], key, args.probe))
        finally:
            for server in servers.values():
                server.stop()
    if 4 in args.concurrency:
        print("\nconcurrency 4, HTTP's throughput / in process's (target ≥ 0.80): "
              + ", ".join(f"{kept[4, w]:.2f} at --workers {w}{'' if kept[4, w] >= 0.8 else ' (MISSED)'}"
                          for w in args.workers))
    if busy is not None:
        others = (machine_busy_seconds() - busy - (own_seconds() - own)) / (time.perf_counter() - began)
        print(f"other processes kept {max(others, 0.0):.2f} of the {os.cpu_count()} CPUs busy during the run, "
              "on average (anything well above 0 slows every row and makes them noisier: run it again)")


if __name__ == "__main__":
    main()
