"""What keeps the server up under load or abuse: a cap on the body answered before the body is read
whole (and a deadline between its chunks), a token bucket per key, and a bounded pool of
inference workers that answers 503 when full instead of queueing without bound."""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .errors import ApiError


class BodyLimit:
    """ASGI middleware: a declared Content-Length over `max_bytes` gets 413 before anything is
    read; a body that grows past it while being read (chunked, or lying about its length) stops
    with 413 there; a client silent for `read_timeout_s` between chunks gets 408."""

    def __init__(self, app, max_bytes: int, read_timeout_s: float):
        self.app, self.max_bytes, self.read_timeout_s = app, max_bytes, read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send, 413, "PayloadTooLarge", self._too_large())
        received = 0

        async def limited_receive():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(408, f"no data from the client for {self.read_timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(413, self._too_large())
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> str:
        return f"request body over the {self.max_bytes / 2 ** 20:g} MiB limit"

    @staticmethod
    async def _refuse(send, status: int, kind: str, message: str) -> None:
        body = json.dumps({"error": {"type": kind, "message": message}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """A token bucket per key: `rate` requests a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one token of `key`'s, or raise a 429 saying when to retry."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1 - tokens) / self.rate)
                raise ApiError(429, f"rate limit of {self.rate:g} requests/s (bursts of {self.burst}) "
                               f"reached; retry in {wait} s", {"Retry-After": str(wait)})
            self._buckets[key] = (tokens - 1, now)


class InferencePool:
    """`workers` threads run detection and embedding; at most `queue` more requests wait for one.
    A request beyond that gets 503 with Retry-After at once; one not done in `timeout_s` gets
    504 (a photo already being processed finishes, and its change, if any, is committed)."""

    def __init__(self, workers: int, queue: int, timeout_s: float):
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="inference")
        self.capacity, self.timeout_s = workers + queue, timeout_s
        self._pending, self._lock = 0, threading.Lock()

    def _release(self, _future) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn, *args):
        with self._lock:
            if self._pending >= self.capacity:
                raise ApiError(503, f"all {self.capacity} inference slots are taken; retry shortly",
                               {"Retry-After": "1"})
            self._pending += 1
        future = self.executor.submit(fn, *args)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"not done in {self.timeout_s:g} s") from None

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
