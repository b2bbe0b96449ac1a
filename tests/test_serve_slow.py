"""`bulkgen serve` against slow, idle and greedy connections (docs/serving.md, "Slow clients and TLS"): a real server
process on 127.0.0.1, real sockets from this process, a bounded number of them for a bounded time."""

from __future__ import annotations

import resource
import select
import signal
import socket
import ssl
import threading
import time

import httpx
import pytest

from tests.cli_helpers import base_env, run_cli
from tests.conftest import wait_for
from tests.serve_helpers import Server, articles, free_port, make_token

#: The soft limit on open files most systems start a process with; the server must do with it.
USUAL_SOFT_LIMIT = 1024
SLOW_CLIENTS = 1000


def start(procs, env: dict[str, str], *args: str, soft_files: int | None = None, scheme: str = "http",
          **client: object) -> Server:
    """`bulkgen serve ARGS` (with at most `soft_files` open files, as a login shell would give it); returns once
    it answers."""
    port = free_port()

    def limit_files() -> None:
        if soft_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc = procs.spawn(["serve", "--port", str(port), *args], env, preexec_fn=limit_files)
    server = Server(proc, f"{scheme}://127.0.0.1:{port}", env)
    server.start_reading()

    def answers() -> bool:
        assert proc.poll() is None, "".join(server.log)
        try:
            return httpx.get(server.url + "/openapi.json", timeout=1, **client).status_code == 200  # type: ignore[arg-type]
        except httpx.TransportError:
            return False

    wait_for(answers, timeout=30, interval=0.05, what="the server to answer")
    return server


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def connect(server: Server, head: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
    if head:
        sock.sendall(head)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed `sock` (EOF or reset); never blocks."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except OSError:
        return True


class Trickle:
    """Sends one more header byte on every socket each `every` seconds, as a slowloris client does."""

    def __init__(self, socks: list[socket.socket], every: float = 1.0):
        self.socks, self.every = socks, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for sock in list(self.socks):
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def files_for_many_sockets():
    """This process holds SLOW_CLIENTS sockets of its own: let it (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = SLOW_CLIENTS * 2 + 512
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit on open files ({hard}) is below the {needed} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_slow_heads_keep_no_status_request_waiting_and_are_closed(processes, tmp_path,
                                                                            files_for_many_sockets):
    env = base_env(tmp_path)
    token = make_token(env, "alice")
    server = start(processes, env, soft_files=USUAL_SOFT_LIMIT)
    with server.client(token) as client:
        job = client.post("/api/bulk-generate", json=articles(10)).json()["bulk_job_id"]
    lines_before = len(server.log)
    socks = [connect(server, b"GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ") for _ in range(SLOW_CLIENTS)]
    trickle = Trickle(socks)
    try:
        # The requirement: an answer within 2 s while the thousand are connected and trickling.
        response = httpx.get(f"{server.url}/api/bulk-generate/{job}", headers={"Authorization": f"Bearer {token}"},
                             timeout=2)
        assert response.status_code == 200 and response.json()["bulk_job"]["id"] == job
        # Each slow head is closed by the server (the default head deadline is 10 s) although it keeps sending.
        wait_for(lambda: all(closed_by_server(s) for s in socks), timeout=25, interval=0.2,
                 what="the server to close every slow connection")
    finally:
        trickle.stop()
        for sock in socks:
            sock.close()
    with server.client(token) as client:
        assert client.get(f"/api/bulk-generate/{job}").status_code == 200
    server.stop()
    added = server.log[lines_before:]
    # One summary line for the closed connections, not one line (or hundreds) per connection.
    assert len(added) < 20, "".join(added[:40])
    summaries = [line for line in added if "sent no complete request" in line]
    assert sum(int(line.split("closed ")[1].split(" ")[0]) for line in summaries) == SLOW_CLIENTS, "".join(added)


@pytest.fixture
def quick(processes, tmp_path):
    """A server with short deadlines and a small connection cap, and alice's token."""
    env = base_env(tmp_path)
    token = make_token(env, "alice")
    server = start(processes, env, "--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1",
                   "--max-connections", "16")
    server.token = token  # type: ignore[attr-defined]
    return server


def test_silent_slow_and_idle_connections_are_closed(quick):
    silent = connect(quick)
    slow_body = connect(quick, f"POST /api/bulk-generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {quick.token}"
                               "\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{".encode())
    kept_alive = connect(quick, f"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {quick.token}\r\n\r\n"
                                .encode())
    wait_for(lambda: b"200 OK" in kept_alive.recv(4096), what="the kept-alive connection's answer")
    socks = [silent, slow_body, kept_alive]
    wait_for(lambda: all(closed_by_server(s) for s in socks), timeout=8, what="the three connections to be closed")
    for sock in socks:
        sock.close()


def test_at_the_connection_cap_idle_connections_make_room(processes, tmp_path):
    env = base_env(tmp_path)
    token = make_token(env, "alice")
    # A head deadline of a minute: within the wait below, only the cap can close a connection.
    server = start(processes, env, "--header-timeout", "60", "--max-connections", "16")
    idle = [connect(server, b"GET / HTTP/1.1\r\n") for _ in range(40)]
    try:
        with server.client(token) as client:
            for _ in range(5):
                assert client.get("/api/me").json()["user"] == "alice"
        wait_for(lambda: sum(closed_by_server(s) for s in idle) >= 40 - 16, timeout=15,
                 what="the oldest idle connections to make room")
        assert not any(closed_by_server(s) for s in idle[-10:])  # the newest stay
    finally:
        for sock in idle:
            sock.close()


def test_a_port_in_use_is_its_own_exit_code_with_one_sentence(tmp_path):
    env = base_env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli(["serve", "--port", str(taken.getsockname()[1])], env, timeout=30)
    assert result.code == 6, result.err
    assert "cannot listen on 127.0.0.1 port" in result.err and "pick another --host or --port" in result.err
    assert "Traceback" not in result.err and "INFO" not in result.err


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_with_a_certificate_the_server_speaks_https(processes, tmp_path):
    env = base_env(tmp_path)
    token = make_token(env, "alice")
    cert, key = self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=cert)
    server = start(processes, env, "--ssl-certfile", cert, "--ssl-keyfile", key, scheme="https", verify=trusted)
    with httpx.Client(base_url=server.url, verify=trusted, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/api/me").json()["user"] == "alice"
    with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port gets no answer
        httpx.get(server.url.replace("https", "http") + "/api/me", timeout=3).raise_for_status()
    assert any("https://127.0.0.1:" in line for line in server.log)


def test_tls_options_go_together_and_are_checked_before_serving(tmp_path):
    env = base_env(tmp_path)
    cert, key = self_signed(tmp_path)
    only = run_cli(["serve", "--port", str(free_port()), "--ssl-certfile", cert], env, timeout=30)
    assert only.code == 2 and "go together" in only.err
    swapped = run_cli(["serve", "--port", str(free_port()), "--ssl-certfile", key, "--ssl-keyfile", cert], env,
                      timeout=30)
    assert swapped.code == 2 and "--ssl-certfile" in swapped.err and "Traceback" not in swapped.err


def test_sigterm_ends_the_server_with_slow_connections_open(quick):
    socks = [connect(quick, b"GET /api/me HTTP/1.1\r\n") for _ in range(20)]
    try:
        assert quick.stop(signal.SIGTERM) == 143
    finally:
        for sock in socks:
            sock.close()
    assert "Traceback" not in "".join(quick.log)


# -- clients that do not read their answers (design.md, "Slow and idle clients") ---------------------------------

#: A request for the OpenAPI document, about 60 KB of answer without a token.
OPENAPI = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
#: Linux's TCP state of a connection that is open both ways (TCP_ESTABLISHED).
ESTABLISHED = 1

needs_tcp_info = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="reads the kernel's TCP state (Linux)")


def tcp_state(sock: socket.socket) -> int:
    """The kernel's state of `sock`'s connection, read without taking a byte of what arrived on it."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def non_reader(server: Server, requests: int = 100) -> socket.socket:
    """A client that pipelines `requests` requests for the OpenAPI document (about 6 MB of answers, more than the
    kernel's buffers hold) and never reads one."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port_of(server)))
    sock.sendall(OPENAPI * requests)
    return sock


def status_answers(server: Server, token: str, job: str) -> bool:
    try:
        response = httpx.get(f"{server.url}/api/bulk-generate/{job}", headers={"Authorization": f"Bearer {token}"},
                             timeout=2)
    except httpx.TransportError:
        return False
    assert response.status_code == 200, response.text
    return True


@needs_tcp_info
def test_a_client_that_never_reads_its_answers_is_closed_after_the_write_timeout(processes, tmp_path):
    env = base_env(tmp_path)
    server = start(processes, env, "--write-timeout", "1")
    sock = non_reader(server)
    try:
        wait_for(lambda: tcp_state(sock) != ESTABLISHED, timeout=15, interval=0.1,
                 what="the server to drop the connection that reads nothing")
    finally:
        sock.close()
    assert server.stop() in (0, 143)
    assert any("1 whose client took no byte of its answer for 1 s (write)" in line for line in server.log), \
        "".join(server.log[-5:])


@needs_tcp_info
def test_at_the_cap_clients_that_never_read_make_room_for_a_status_request(processes, tmp_path):
    env = base_env(tmp_path)
    token = make_token(env, "alice")
    # Deadlines of a minute: within the waits below, only the cap can close a connection.
    server = start(processes, env, "--max-connections", "16", "--write-timeout", "60", "--header-timeout", "60")
    with server.client(token) as client:
        job = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
    hogs = [non_reader(server) for _ in range(20)]
    try:
        wait_for(lambda: status_answers(server, token, job), timeout=10, interval=0.1,
                 what="a status answer beside 20 clients that never read, at a cap of 16")
        assert status_answers(server, token, job)
        assert sum(tcp_state(s) != ESTABLISHED for s in hogs) >= 4
    finally:
        for sock in hogs:
            sock.close()


def test_a_slow_event_stream_reader_that_keeps_reading_is_not_cut(processes, tmp_path):
    """The write deadline counts time with no byte taken, not the answer's length: a replay of ~4 MB read at a
    slow, steady pace for several times the deadline arrives whole."""
    from tests.serve_helpers import RawStream
    from tests.test_serve_live import _fill_log

    env = base_env(tmp_path)
    token = make_token(env, "alice")
    server = start(processes, env, "--write-timeout", "1")
    with server.client(token) as client:
        job = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
    _fill_log(env, "alice", job, 30_000)
    stream = RawStream(server, token, last_id=0)  # type: ignore[arg-type]
    assert stream.status() == 200
    marker, began = b"\nevent: bulk.", time.monotonic()
    got, tail = stream.received.count(marker), b""
    while got < 30_001:  # the job's own queued event, then the 30,000 written
        try:
            chunk = stream.sock.recv(16384)
        except OSError:
            chunk = b""
        assert chunk, f"the stream was cut after {got} events and {time.monotonic() - began:.1f} s"
        got += (tail + chunk).count(marker)
        tail = chunk[-len(marker) + 1:]
        time.sleep(0.02)  # a slow reader: about 800 KB/s
    stream.drop(reset=False)


def test_pipelined_requests_are_not_read_while_their_answers_wait(processes, tmp_path):
    """uvicorn stops reading a connection while a request is in progress (h11 pauses at the next request): a
    client pipelining requests without reading fills the kernel's buffers, not the server's memory."""
    env = base_env(tmp_path)
    server = start(processes, env, "--write-timeout", "60")
    sock = non_reader(server, requests=1)
    sock.setblocking(False)
    chunk, sent = OPENAPI * 1000, 0
    try:
        while sent < 64 << 20:
            _, writable, _ = select.select([], [sock], [], 2)
            if not writable:
                break  # nobody takes more: the server stopped reading
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
        assert sent < 16 << 20, f"the server took {sent >> 20} MiB of requests it could not answer"
    finally:
        sock.close()


#: A request whose answer is small (a 401 of a few hundred bytes): thousands fit in the kernel's buffers.
SMALL = b"GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class SmallPipeliners:
    """The second review's clients: `n` sockets (receive buffer 4 KiB) pipelining 100 requests with small answers
    every 0.1 s (`rounds` times; 0: until `stop`) and never reading one."""

    def __init__(self, server: Server, n: int, rounds: int = 0):
        self.socks = [self.opened(server) for _ in range(n)]
        self._stop, self._rounds = threading.Event(), rounds  # 0: until stopped
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    @staticmethod
    def opened(server: Server) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port_of(server)))
        sock.setblocking(False)
        return sock

    def _pump(self) -> None:
        sent = 0
        while not self._stop.wait(0.1) and (self._rounds == 0 or sent < self._rounds):
            sent += 1
            for sock in self.socks:
                try:
                    sock.send(SMALL * 100)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


@needs_tcp_info
def test_clients_pipelining_small_answers_are_reset_after_the_write_timeout(processes, tmp_path):
    """Second review of issue 18: small answers filled the kernel's send buffer (megabytes on loopback) and never
    paused uvicorn's writing, so the write deadline never ran for them."""
    env = base_env(tmp_path)
    server = start(processes, env, "--write-timeout", "1")
    hogs = SmallPipeliners(server, 3, rounds=20)  # 2,000 answers each, about 1 MB: a few MB fitted in the kernel
    try:
        wait_for(lambda: all(tcp_state(s) != ESTABLISHED for s in hogs.socks), timeout=20, interval=0.1,
                 what="the server to drop the clients that pipeline small requests and read nothing")
    finally:
        hogs.stop()
    assert server.stop() in (0, 143)
    assert any("3 whose client took no byte of its answer for 1 s (write)" in line for line in server.log), \
        "".join(server.log[-5:])


@needs_tcp_info
def test_at_the_cap_clients_pipelining_small_answers_make_room_for_a_status_request(processes, tmp_path):
    """The reviewer's scenario: 20 such clients at a cap of 16 (write timeout 5 s); a status request was answered
    0 times in 30 s, each at the cap counting as busy with a request and never stalled."""
    env = base_env(tmp_path)
    token = make_token(env, "alice")
    server = start(processes, env, "--max-connections", "16", "--write-timeout", "5")
    with server.client(token) as client:
        job = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
    hogs = SmallPipeliners(server, 20)
    try:
        time.sleep(1)  # the reviewer's start: every hog has sent requests before the status request comes
        wait_for(lambda: status_answers(server, token, job), timeout=10, interval=0.1,
                 what="a status answer (within 2 s) beside 20 clients pipelining small requests at a cap of 16")
    finally:
        hogs.stop()


@needs_tcp_info
def test_at_the_cap_a_stalled_stream_that_keeps_reading_stays_before_clients_that_read_nothing(processes, tmp_path):
    """Second review's side note: at the cap the stalled connection whose client took least goes first, not the one
    stalled longest: an event stream read slowly (it stalled first) outlasts the clients that read nothing."""
    import fcntl
    import struct
    import termios

    from tests.test_serve_live import _fill_log

    env = base_env(tmp_path)
    token = make_token(env, "alice")
    server = start(processes, env, "--max-connections", "16", "--write-timeout", "60", "--header-timeout", "60")
    with server.client(token) as client:
        job = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
    _fill_log(env, "alice", job, 10_000)  # a replay of about 1.3 MB: more than the buffers hold
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", port_of(server)))
    reader.sendall(f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   "Last-Event-ID: 0\r\n\r\n".encode())

    def waiting_bytes(sock: socket.socket = reader) -> int:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]

    wait_for(lambda: waiting_bytes() >= 2048, timeout=10, interval=0.05, what="the replay to fill the reader's window")
    taken, began = 0, time.monotonic()

    def trickle() -> None:  # the reader takes what has arrived, 20 times a second
        nonlocal taken
        taken += len(reader.recv(65536)) if waiting_bytes() else 0

    wait_for(lambda: trickle() or taken >= 64 * 1024, timeout=20, interval=0.05, what="the reader to take 64 KB")
    hogs = SmallPipeliners(server, 15)  # the cap, with the reader: busy, their answers not taken, not yet stalled
    try:
        wait_for(lambda: trickle() or all(waiting_bytes(s) >= 2048 for s in hogs.socks), timeout=10, interval=0.05,
                 what="answers waiting on every client that reads nothing")
        for _ in range(5):  # each status request makes room: a client that reads nothing goes
            trickle()
            wait_for(lambda: trickle() or status_answers(server, token, job), timeout=10, interval=0.1,
                     what="a status answer at the cap")
            assert tcp_state(reader) == ESTABLISHED, \
                f"the slow reader was cut after taking {taken} bytes in {time.monotonic() - began:.1f} s"
            hogs.socks.append(hogs.opened(server))  # the cap is reached again
    finally:
        hogs.stop()
        reader.close()
