"""Latency of `GET /api/bulk-generate/{id}` with 50 concurrent clients while a job runs.

    python bench/bench_serve.py [--clients 50] [--seconds 20] [--latency 0.2] [--processor]

A `bulkgen serve` on 127.0.0.1 (SQLite store), a 50-item job processed by a
`bulkgen run` beside it (or the server's own --processor) against the
reference service at a fixed latency, and N clients (httpx, one connection
each) asking for the job's status as fast as they get answers. Prints the
median and 99th percentile of the status route's latency, the requests per
second, and how many items the job finished meanwhile; also the same
measure with no job running, for reference, and beside each abusive client
(issue 18): `--slow-heads` N connections (default 1000) that send a request
head one byte a second and reconnect when the server closes them; another
user's 600 idle event streams and 20 churning ones while events flow; a
submit flood from another user's token (the write rate answers 429); and
`Last-Event-ID: 0` replays dropped after 64 KiB; and `--stuffers` N clients
(default 300) that pipeline requests and never read an answer, reopened when
the server resets them (after its `--write-timeout`, 10 s here). Needs
`pip install -e '.[serve]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bulkgen_cli.content.reference import ReferenceService  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def hammer(url: str, token: str, clients: int, seconds: float) -> list[float]:
    """Latencies (seconds) of every status request made by `clients` clients during `seconds`."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                     limits=httpx.Limits(max_connections=1)) as http:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await http.get(url)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def raise_open_files(count: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


def background(count: int, stop: threading.Event, opened: Callable[[], socket.socket],
               poke: Callable[[socket.socket], bool]) -> list[int]:
    """`count` connections in a thread, each poked once a second (`poke`: False when the server closed it) and
    reopened as soon as the server closes one. Returns [connections the server closed], filled when `stop` is set."""
    raise_open_files(count)
    closed = [0]

    def work() -> None:
        socks = [opened() for _ in range(count)]
        while not stop.wait(1.0):
            for i, sock in enumerate(socks):
                try:
                    alive = poke(sock)
                except OSError:
                    alive = False
                if not alive:
                    closed[0] += 1
                    sock.close()
                    socks[i] = opened()
        for sock in socks:
            sock.close()

    threading.Thread(target=work, daemon=True).start()
    return closed


def slow_heads(port: int, count: int, stop: threading.Event) -> list[int]:
    """Connections that send a request head one byte a second."""
    import select

    def opened() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        return sock

    def poke(sock: socket.socket) -> bool:
        if select.select([sock], [], [], 0)[0] and sock.recv(4096) == b"":
            return False
        sock.send(b"X")
        return True

    return background(count, stop, opened, poke)


def stuffers(port: int, count: int, stop: threading.Event) -> list[int]:
    """Connections that pipeline `GET /openapi.json` requests (about 60 KB of answer each) and never read an
    answer, with a small receive buffer."""
    request = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 64

    def opened() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        return sock

    def poke(sock: socket.socket) -> bool:
        try:
            sock.send(request)
        except BlockingIOError:
            pass  # the server stopped reading this one: it waits on us, as meant
        return True

    return background(count, stop, opened, poke)


def report(label: str, latencies: list[float], seconds: float) -> None:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"  {label}: {len(ordered)} requests, {len(ordered) / seconds:.0f}/s; "
          f"median {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")


def run(cli: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bulkgen_cli", *cli], env=env, text=True, capture_output=True,
                          check=True, **kw)  # type: ignore[call-overload]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency", type=float, default=0.2, help="the reference service's latency")
    parser.add_argument("--processor", action="store_true", help="process in the server, not a separate run")
    parser.add_argument("--slow-heads", type=int, default=1000, help="slow-header connections as background load")
    parser.add_argument("--stuffers", type=int, default=300,
                        help="connections that pipeline requests and never read the answers, as background load")
    parser.add_argument("--write-timeout", type=float, default=10.0,
                        help="the server's --write-timeout: short enough to reset never-readers within a measure")
    args = parser.parse_args()
    service = ReferenceService(latency=args.latency).start()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")}
        env.update(XDG_DATA_HOME=home, BULKGEN_API_URL=service.url, BULKGEN_DELAY="0", BULKGEN_USER="bench")
        token = run(["token", "create", "--user", "bench"], env).stdout.strip()
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "bulkgen_cli", "serve", "--port", str(port), "--delay", "0",
                                   "--max-streams", "1000",
                                   "--write-timeout", str(args.write_timeout),
                                   *(["--processor"] if args.processor else [])],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(_measure(base, token, env, args))
        finally:
            server.terminate()
            server.wait(30)
            service.stop()


async def _measure(base: str, token: str, env: dict[str, str], args: argparse.Namespace) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/openapi.json").status_code == 200:
                break
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    headers = {"Authorization": f"Bearer {token}"}
    items = [{"topic": f"Article {i}"} for i in range(50)]
    idle_job = httpx.post(base + "/api/bulk-generate", headers=headers,
                          json={"bulk_config": {"items": items}, "not_before": "+1d"}).json()["bulk_job_id"]
    print(f"{args.clients} clients, {args.seconds:g} s each measure; service latency {args.latency:g} s; SQLite store")
    await hammer(f"{base}/api/bulk-generate/{idle_job}", token, args.clients, 2.0)  # warm up: threads open the store
    report("no job running", await hammer(f"{base}/api/bulk-generate/{idle_job}", token, args.clients, 5.0), 5.0)
    backgrounds = ((slow_heads, args.slow_heads, "slow-header connections (reopened when closed)",
                    "slow connections the server closed"),
                   (stuffers, args.stuffers, "clients pipelining requests and never reading (reopened when reset)",
                    "never-reading connections the server reset"))
    for load, count, what, closed_what in backgrounds:
        if not count:
            continue
        stop = threading.Event()
        closed = load(int(base.rsplit(":", 1)[1]), count, stop)
        await asyncio.sleep(2.0)
        latencies = await hammer(f"{base}/api/bulk-generate/{idle_job}", token, args.clients, args.seconds)
        stop.set()
        report(f"beside {count} {what}", latencies, args.seconds)
        print(f"  {closed_what} meanwhile: {closed[0]}")
    job = httpx.post(base + "/api/bulk-generate", headers=headers, json={"bulk_config": {"items": items}}).json()
    worker = None if args.processor else subprocess.Popen([sys.executable, "-m", "bulkgen_cli", "run", "--forever"],
                                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"{base}/api/bulk-generate/{job['bulk_job_id']}"
    before = httpx.get(url, headers=headers).json()["progress"]["completed"]
    latencies = await hammer(url, token, args.clients, args.seconds)
    after = httpx.get(url, headers=headers).json()["progress"]["completed"]
    report(f"while the job runs ({'the server' if args.processor else 'a bulkgen run'} processing)", latencies,
           args.seconds)
    ideal = min(len(items) - before, args.seconds / args.latency)
    print(f"  items completed meanwhile: {after - before} (at most {ideal:.0f})")
    if worker is not None:
        worker.terminate()
        worker.wait(30)
    streamer = run(["token", "create", "--user", "streamer"], env).stdout.strip()
    await with_streams(base, streamer, lambda: hammer(f"{base}/api/bulk-generate/{idle_job}", token, args.clients,
                                                       args.seconds), args.seconds)
    for label, abuse, admin in (
            ("a submit flood from another user's token (8 at once, as fast as answered)", flood, []),
            ("Last-Event-ID: 0 replays of the whole log (an admin's: every user's changes), 4 at once, each "
             "dropped after 64 KiB or 1 s", replays, ["--admin"])):
        abuser = run(["token", "create", "--user", f"abuser-{abuse.__name__}", *admin], env).stdout.strip()
        await beside(label, abuse(base, abuser),
                     lambda: hammer(f"{base}/api/bulk-generate/{idle_job}", token, args.clients, args.seconds),
                     args.seconds)


async def beside(label: str, abuse: Any, measure: Any, seconds: float) -> None:
    """Measure the status route while `abuse` (a coroutine that counts what it got) runs; report both."""
    counts: dict[str, int] = {}
    task = asyncio.create_task(abuse(counts))
    await asyncio.sleep(1.0)
    latencies = await measure()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    report(f"beside {label}", latencies, seconds)
    print(f"  the abuser's answers: {dict(sorted(counts.items()))}")


def flood(base: str, token: str) -> Any:
    """Submits of a 10-item job from 8 connections, each sent as soon as the last was answered (the write rate)."""
    async def go(counts: dict[str, int]) -> None:
        body = {"bulk_config": {"items": [{"topic": f"Flood {i}"} for i in range(10)]}, "not_before": "+1d"}
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            async def one() -> None:
                while True:
                    status = str((await http.post("/api/bulk-generate", json=body)).status_code)
                    counts[status] = counts.get(status, 0) + 1
            await asyncio.gather(*(one() for _ in range(8)))
    return go


def replays(base: str, token: str) -> Any:
    """Streams that resume from the log's start (Last-Event-ID: 0), read 64 KiB (or for 1 s) and hang up, 4 at
    a time."""
    async def go(counts: dict[str, int]) -> None:
        headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": "0"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            async def one() -> None:
                while True:
                    got, status = 0, "no answer"
                    try:
                        async with asyncio.timeout(1.0):
                            async with http.stream("GET", "/api/events") as response:
                                status = str(response.status_code)
                                async for chunk in response.aiter_bytes():
                                    got += len(chunk)
                                    if got >= 65536:
                                        break
                    except TimeoutError:
                        pass
                    counts[status] = counts.get(status, 0) + 1
                    counts["bytes"] = counts.get("bytes", 0) + got
                    if status != "200":
                        await asyncio.sleep(0.1)
            await asyncio.gather(*(one() for _ in range(4)))
    return go


async def with_streams(base: str, token: str, measure: Any, seconds: float, idle: int = 600,
                       churn: int = 20) -> None:
    """The status route beside another user's 600 idle event streams, 20 more opened and dropped over and over,
    and that user's job paused and resumed 20 times a second (design.md, "Live progress")."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=idle + churn + 10)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:
        job = (await http.post("/api/bulk-generate", json={"bulk_config": {"items": [{"topic": "x"}] * 10},
                                                           "not_before": "+1d"})).json()["bulk_job_id"]
        stop = asyncio.Event()
        opened = {"idle": 0, "churned": 0}

        async def hold(forever: bool) -> None:
            while not stop.is_set():
                async with http.stream("GET", "/api/events") as response:
                    async for _ in response.aiter_bytes():
                        if stop.is_set() or not forever:
                            break
                opened["idle" if forever else "churned"] += 1

        async def toggle() -> None:
            while not stop.is_set():
                for action in ("pause", "resume"):
                    await http.post(f"/api/bulk-generate/{job}/{action}")
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(hold(n < idle)) for n in range(idle + churn)] + [asyncio.create_task(toggle())]
        await asyncio.sleep(3)  # the streams open
        latencies = await measure()
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    report(f"beside {idle} idle streams, {churn} churning ({opened['churned']} opened and dropped), "
           "events 20/s", latencies, seconds)


if __name__ == "__main__":
    main()
