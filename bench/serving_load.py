"""Raw-HTTP load against a running app: gradio's two-step call API (POST ``/gradio_api/call/NAME``,
then read the event stream), N client threads with one keep-alive connection each, bounded by a
duration and a query cap. Used by ``bench.serving``; nothing here starts or stops the app."""
from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the app's search workers and multiprocessing's helper)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            try:
                if int(_stat(int(entry))[1]) == pid:
                    found.append(int(entry))
            except OSError:  # exited meanwhile
                continue
    return found


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MB (``/proc/PID/status`` VmRSS)."""
    with open(f"/proc/{pid}/status") as handle:
        kb = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return round(kb / 1024, 1)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB); a process that exits meanwhile counts 0."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_mb(p)
            todo += child_pids(p)
        except (OSError, StopIteration):  # exited meanwhile (a zombie has no VmRSS line)
            continue
    return round(total, 1)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads, plus its live child processes (the
    app's search workers, webapp.search_workers), from Linux ``/proc/PID/stat``."""
    fields = _stat(pid)
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    for child in child_pids(pid):
        try:
            total += process_cpu_s(child)
        except OSError:  # exited meanwhile
            continue
    return total


class Client:
    """One HTTP/1.1 keep-alive connection to the app (loopback only)."""

    def __init__(self, port: int, timeout: float = 60):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        # one session per client, as a browser tab has: without it gradio builds a new session
        # (a copy of the whole page's config) on every call, a cost no page user pays per query
        self.session_hash = uuid.uuid4().hex[:11]

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnects on the next request
            raise

    def upload(self, name: str, payload: bytes) -> dict[str, Any]:
        """POST /gradio_api/upload; the FileData an endpoint takes for the uploaded file."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
        status, raw = self._request("POST", "/gradio_api/upload", body,
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise RuntimeError(f"upload answered {status}")
        return {"path": json.loads(raw)[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api_name: str, data: list[Any]) -> list[Any]:
        """One named-endpoint call; the output list, or RuntimeError on an error event."""
        status, raw = self._request("POST", f"/gradio_api/call/{api_name}", json.dumps({"data": data, "session_hash": self.session_hash}).encode(),
                                    {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"call answered {status}")
        event = json.loads(raw)["event_id"]
        status, stream = self._request("GET", f"/gradio_api/call/{api_name}/{event}")
        if status != 200 or b"event: complete" not in stream:
            raise RuntimeError(f"no result: {stream[-200:]!r}")
        return json.loads(stream.split(b"event: complete\ndata:", 1)[1].strip().splitlines()[0])

    def close(self) -> None:
        self.conn.close()


def endpoint_defaults(port: int) -> dict[str, list[Any]]:
    """Each named endpoint's parameter defaults (``/gradio_api/info``), so a call can send the
    parameters it cares about and the rest as the page would (endpoints gain trailing options)."""
    client = Client(port)
    try:
        status, raw = client._request("GET", "/gradio_api/info")
    finally:
        client.close()
    info = json.loads(raw) if status == 200 else {}
    return {name.lstrip("/"): [p.get("parameter_default") for p in spec.get("parameters", [])]
            for name, spec in info.get("named_endpoints", {}).items()}


@dataclass
class LevelResult:
    """One endpoint at one number of concurrent clients."""

    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        done = len(self.latencies_ms)
        lat = np.asarray(self.latencies_ms or [np.nan])
        return {"queries": done, "qps": round(done / self.wall_s, 2) if self.wall_s else 0.0,
                "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
                "errors": self.errors, "wall_s": round(self.wall_s, 2),
                "server_cpu_ms_per_query": round(1e3 * self.server_cpu_s / done, 1) if done else None}


def run_level(port: int, pid: int, query: Callable[[Client, int], None], clients: int, seconds: float,
              max_queries: int, warmup: int = 2) -> LevelResult:
    """``clients`` threads each calling ``query(client, i)`` until ``seconds`` have passed or
    ``max_queries`` were sent in all; a query that raises counts as an error."""
    result = LevelResult(clients)
    lock = threading.Lock()
    sent = [0]
    conns = [Client(port) for _ in range(clients)]
    for i, conn in enumerate(conns[:warmup] if clients >= warmup else conns):  # connections and caches warm
        try:
            query(conn, -1 - i)
        except Exception:  # noqa: BLE001 - counted below if it persists
            pass
    deadline = [0.0]

    def worker(conn: Client) -> None:
        while True:
            with lock:
                if sent[0] >= max_queries or time.perf_counter() > deadline[0]:
                    return
                i = sent[0]
                sent[0] += 1
            start = time.perf_counter()
            try:
                query(conn, i)
                ok = True
            except Exception:  # noqa: BLE001 - any failure is an error of this level
                ok = False
            ms = (time.perf_counter() - start) * 1e3
            with lock:
                if ok:
                    result.latencies_ms.append(ms)
                else:
                    result.errors += 1

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in conns]
    cpu0, start = process_cpu_s(pid), time.perf_counter()
    deadline[0] = start + seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    result.wall_s = time.perf_counter() - start
    result.server_cpu_s = process_cpu_s(pid) - cpu0
    for c in conns:
        c.close()
    return result
