"""Link lab: run chipfuse's die workers as separate hosts (network namespaces) whose links have shaped rate and delay.

Run (as root, needs iproute2):  python benchmarks/netlab.py selftest [--transparent] | gloo-check | cleanup [PREFIX]

Topology: one "switch" namespace and one namespace per host, joined by a veth pair per host (eth0 inside the host,
10.77.0.<i+1>/24; port p<i> on the switch, which itself is 10.77.0.254). Nothing is added to the root namespace.
Bandwidth: a tbf qdisc on both ends of a host's veth, so traffic to and from the host is limited to its rate_mbit
(counted on Ethernet frames; with the default 9000-byte MTU, TCP goodput is ~99% of it). A path a->b crosses two
links: rate min(rate[a], rate[b]), one-way delay delay[a] + delay[b] (`Lab.one_way_ms`).

Delay (this kernel has no netem), two ways:
- default: the switch is a bridge, and the delay applies ONLY to connections made to `Lab.delayed_addr(b, port)`,
  a delaying TCP relay in the switch namespace (`relay_main`): the connection's data is held for the one-way delay in
  each direction (chunk by chunk, order kept, about +1 ms of timer slack); its handshake is not delayed. All other
  traffic -- direct connections to `Lab.addr(b)`, and the connections gloo opens between ranks, even when its
  rendezvous goes through a relay -- gets the rate limits but no delay.
- Lab(..., transparent_delay=True): the switch routes instead, and every IPv4 packet between hosts passes a userspace
  delay line on a TUN device (`delay_line_main`), so all traffic, gloo's included, gets the delay (handshakes too);
  `delayed_addr` then is just the host's address. Costs CPU per packet (Python).

torch.distributed (gloo) across hosts: every rank needs GLOO_SOCKET_IFNAME=eth0 (`Lab.run` sets it) and init_method
tcp://<rank-0 host's addr>:<port>; without the variable gloo binds to the machine's hostname (127.0.0.1 here) and
the ranks time out connecting to each other. See `gloo_check`.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ipaddress
import itertools
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

SUBNET = "10.77.0"
SWITCH_ADDR = f"{SUBNET}.254"  # the switch (br0, or its lo when routing), where the delay relays listen
IFNAME = "eth0"  # every host's link, inside its own namespace
BRIDGE = "br0"
GLOO_PORT = 29500  # free in every host: each namespace has its own ports
TBF_QUEUE_S = 0.01  # queue a tbf holds before it drops: 10 ms at its rate, but at least TBF_QUEUE_MIN bytes
TBF_QUEUE_MIN = 1 << 20  # a host's TCP puts up to ~1 MB into its own qdisc; a smaller tbf drops its packets (measured)
DELAY_TABLE = "100"  # transparent mode: the switch's routing table that sends what hosts send into the delay line
DELAY_DEV = "dly"  # transparent mode: the delay line's TUN device in the switch namespace
DELAY_LINE_BYTES = 32 << 20  # transparent mode: packets the delay line holds at most (more are dropped, as a queue)
RELAY_CHUNK = 1 << 16  # bytes read at a time by the relay
RELAY_QUEUE = 64  # chunks a relay holds per direction (at most 4 MiB)
_NAME = re.compile(r"^cf(\d+)n\d+-")  # namespaces made with the default prefix: cf<pid>n<k>-sw, cf<pid>n<k>-h<i>
_HERE = os.path.abspath(__file__)
_counter = itertools.count()
_open_labs: list[Lab] = []


class LabError(RuntimeError):
    """A lab command failed (message carries the command and its stderr)."""


def _cmd(argv: list[str], timeout: float = 10.0, check: bool = True) -> str:
    """Run one ip/tc command, bounded in time; its stdout, or LabError."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise LabError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def namespaces() -> list[str]:
    """Names of the network namespaces `ip netns list` knows."""
    return [line.split()[0] for line in _cmd(["ip", "netns", "list"]).splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(ns: str) -> None:
    """Kill what still runs inside a lab namespace (all of it was started there by a lab), then delete it."""
    for _ in range(3):
        pids = [int(p) for p in _cmd(["ip", "netns", "pids", ns], check=False).split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    _cmd(["ip", "netns", "del", ns], check=False)


def cleanup_stale(prefix: str | None = None) -> list[str]:
    """Delete leftover lab namespaces: those whose name starts with prefix, or (no prefix) default-named ones whose
    creating process is gone. Returns the names deleted."""
    if prefix is not None and len(prefix) < 2:
        raise ValueError("prefix too short: it would match namespaces that are not a lab's")
    gone = []
    for ns in namespaces():
        m = _NAME.match(ns)
        if ns.startswith(prefix) if prefix is not None else m is not None and not _alive(int(m.group(1))):
            _delete_namespace(ns)
            gone.append(ns)
    return gone


def _close_open_labs() -> None:
    for lab in list(_open_labs):
        lab.close()


atexit.register(_close_open_labs)


def _per_host(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} hosts")
    return values


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout, waiting at most timeout seconds (LabError if none)."""
    assert proc.stdout is not None, "started without stdout=PIPE"
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise LabError(f"no output from {proc.args!r} within {timeout:g} s (exit code {proc.poll()})")
    return line.strip()


def _stop(proc: subprocess.Popen, grace_s: float = 2.0) -> None:
    """SIGTERM a child (its whole process group when it leads one), SIGKILL it after grace_s."""
    def send(sig):
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:  # unkillable for now (in the kernel): the namespace goes anyway
                pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()


class Lab:
    """N hosts in network namespaces on one switch, each link shaped (rate_mbit, delay_ms); a context manager that
    tears everything down on exit, error or Ctrl-C.

    rate_mbit / delay_ms: one value for every host or a list, one per host (None / 0: unshaped / no delay).
    transparent_delay: False (default): the switch is a bridge and the delay applies only to connections made through
    `delayed_addr` (a TCP relay). True: the switch routes, and every IPv4 packet between hosts passes a userspace
    delay line (a TUN device), so ALL traffic gets the delay, gloo's included; it costs CPU per packet.
    """

    def __init__(self, n: int, rate_mbit=None, delay_ms=0.0, mtu: int = 9000, prefix: str | None = None,
                 transparent_delay: bool = False):
        if not 1 <= n <= 250:
            raise ValueError("1 to 250 hosts")
        self.n = n
        self.rates: list[float | None] = _per_host(rate_mbit, n, "rate_mbit")
        self.delays: list[float] = [float(d or 0) for d in _per_host(delay_ms, n, "delay_ms")]
        self.mtu = mtu
        self.transparent = transparent_delay
        self.prefix = prefix or f"cf{os.getpid()}n{next(_counter)}-"
        self.switch = f"{self.prefix}sw"
        self.hosts = [f"{self.prefix}h{i}" for i in range(n)]
        self._made: list[str] = []
        self._procs: list[subprocess.Popen] = []
        self._relays: dict[tuple[int, int], tuple[str, int, subprocess.Popen]] = {}

    # ------------------------------------------------------------------ set-up and teardown
    def __enter__(self) -> Lab:
        _open_labs.append(self)
        try:
            cleanup_stale()  # leftovers of labs whose process was killed
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        existing = set(namespaces())
        for ns in (self.switch, *self.hosts):
            if ns in existing:
                raise LabError(f"namespace {ns} exists already (cleanup_stale({self.prefix!r}) removes it)")
            _cmd(["ip", "netns", "add", ns])
            self._made.append(ns)
        sw = ["ip", "-n", self.switch]
        if self.transparent:  # before the ports: it sets the switch's defaults (proxy ARP) they inherit
            self._start_delay_line()
        else:
            _cmd([*sw, "link", "add", BRIDGE, "mtu", str(self.mtu), "type", "bridge"])
        for i, ns in enumerate(self.hosts):
            port = f"p{i}"
            _cmd([*sw, "link", "add", port, "mtu", str(self.mtu), "type", "veth",
                  "peer", "name", IFNAME, "mtu", str(self.mtu), "netns", ns])
            if self.transparent:  # what host i sends goes into the delay line; what comes out is routed to its host
                _cmd([*sw, "ntable", "change", "name", "arp_cache", "dev", port, "proxy_delay", "0"])  # else 0-0.8 s
                _cmd([*sw, "link", "set", port, "up"])
                _cmd([*sw, "route", "add", f"{self.addr(i)}/32", "dev", port])
                _cmd([*sw, "rule", "add", "iif", port, "lookup", DELAY_TABLE])
            else:
                _cmd([*sw, "link", "set", port, "master", BRIDGE, "up"])
            _cmd(["ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", IFNAME])
            _cmd(["ip", "-n", ns, "link", "set", IFNAME, "up"])
            _cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
            self.shape(i, self.rates[i])
        if self.transparent:
            _cmd([*sw, "addr", "add", f"{SWITCH_ADDR}/32", "dev", "lo"])
            _cmd([*sw, "link", "set", DELAY_DEV, "mtu", str(self.mtu), "up"])
            _cmd([*sw, "route", "add", "default", "dev", DELAY_DEV, "table", DELAY_TABLE])
        else:
            _cmd([*sw, "addr", "add", f"{SWITCH_ADDR}/24", "dev", BRIDGE])
            _cmd([*sw, "link", "set", BRIDGE, "up"])
        _cmd([*sw, "link", "set", "lo", "up"])

    def _start_delay_line(self) -> None:
        delays = {self.addr(i): self.delays[i] for i in range(self.n)}
        proc = self._spawn(self.switch, [sys.executable, _HERE, "delay-line", "--delays", json.dumps(delays)],
                           stdout=subprocess.PIPE, text=True)
        line = _read_line(proc, 10.0)
        if line != "READY":
            raise LabError(f"delay line: {line}")

    def close(self) -> None:
        """Stop every process the lab started, delete its namespaces (idempotent)."""
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()
        self._relays.clear()
        for ns in reversed(self._made):
            _delete_namespace(ns)
        self._made.clear()
        if self in _open_labs:
            _open_labs.remove(self)

    # ------------------------------------------------------------------ addressing and shaping
    def addr(self, i: int) -> str:
        """Host i's address (on its eth0)."""
        return f"{SUBNET}.{i + 1}"

    def one_way_ms(self, a: int, b: int) -> float:
        """Delay added to traffic a->b (through `delayed_addr`, or any with transparent_delay): both links' delays."""
        return self.delays[a] + self.delays[b]

    def shape(self, i: int, rate_mbit: float | None) -> None:
        """Limit host i's link to rate_mbit in both directions (tbf on both veth ends); None removes the limit."""
        self.rates[i] = rate_mbit
        for ns, dev in ((self.hosts[i], IFNAME), (self.switch, f"p{i}")):
            if rate_mbit is None:
                _cmd(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
                continue
            # bucket: 2 ms at the rate, at least two full frames (a frame larger than the bucket is dropped);
            # small next to a measured transfer, so the rate holds within ~1% over a few MB
            rate_bytes = rate_mbit * 1e6 / 8
            burst = max(int(rate_bytes * 0.002), 2 * (self.mtu + 14))
            limit = max(int(rate_bytes * TBF_QUEUE_S), TBF_QUEUE_MIN) + burst
            _cmd(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                  "burst", str(burst), "limit", str(limit)])

    # ------------------------------------------------------------------ processes
    def host_env(self, i: int) -> dict[str, str]:
        """Variables every process on host i needs: gloo binds to the host's link, not to the machine's hostname."""
        return {"GLOO_SOCKET_IFNAME": IFNAME}

    def run(self, i: int, argv: list[str], env: dict[str, str] | None = None, **popen_kw) -> subprocess.Popen:
        """Start argv inside host i (`ip netns exec`); env is added to this process's environment and `host_env`.
        The lab stops the process (its process group) on exit."""
        return self._spawn(self.hosts[i], argv, {**self.host_env(i), **(env or {})}, **popen_kw)

    def _spawn(self, ns: str, argv: list[str], env: dict[str, str] | None = None, **popen_kw) -> subprocess.Popen:
        if ns not in self._made:
            raise LabError("the lab is not set up (use it as a context manager)")
        popen_kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *map(str, argv)], env={**os.environ, **(env or {})},
                                **popen_kw)
        self._procs.append(proc)
        return proc

    def delayed_addr(self, b: int, port: int) -> tuple[str, int]:
        """(address, port) to connect to instead of (addr(b), port) to get the links' delay on the connection's data.

        With transparent_delay that is (addr(b), port) itself. Otherwise this starts (once per target) a relay in the
        switch namespace, listening on the same port number when it is free there (so a torch rendezvous
        tcp://<relay>:<port> still has rank 0's store bind <port>); a client on host a gets one_way_ms(a, b) in each
        direction, a client elsewhere delays[b]."""
        if self.transparent:
            return self.addr(b), port
        if (b, port) not in self._relays:
            by_source = {self.addr(a): self.one_way_ms(a, b) for a in range(self.n)}
            proc = self._spawn(self.switch, [sys.executable, _HERE, "relay", "--listen", f"{SWITCH_ADDR}:{port}",
                                             "--target", f"{self.addr(b)}:{port}", "--delays", json.dumps(by_source),
                                             "--default-delay", str(self.delays[b])],
                               stdout=subprocess.PIPE, text=True)
            line = _read_line(proc, 10.0)
            if not line.startswith("LISTEN "):
                raise LabError(f"relay: {line}")
            self._relays[(b, port)] = (SWITCH_ADDR, int(line.split()[1]), proc)
        return self._relays[(b, port)][:2]

    def stop_relay(self, b: int, port: int) -> None:
        """Stop the relay `delayed_addr(b, port)` started, if any (its connections end)."""
        if (relay := self._relays.pop((b, port), None)) is not None:
            _stop(relay[2], 1.0)
            self._procs.remove(relay[2])


# ---------------------------------------------------------------------- the delay relay
async def _delay_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy reader to writer, releasing each chunk delay_s after it was read; order kept, at most RELAY_QUEUE chunks
    held (then reading pauses and TCP flow control pushes back on the sender)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=RELAY_QUEUE)

    async def pump():
        while True:
            try:
                chunk = await reader.read(RELAY_CHUNK)
            except OSError:
                chunk = b""
            await queue.put((loop.time() + delay_s, chunk))
            if not chunk:
                return

    task = asyncio.create_task(pump())
    try:
        while True:
            due, chunk = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not chunk:  # EOF (or the peer's reset): pass the half-close on
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
    finally:
        task.cancel()


def relay_main(listen: str, target: str, delays: dict[str, float], default_delay: float, lifetime_s: float) -> None:
    """Serve a delaying TCP relay: accept on listen (host:port; another port if that one is taken, printed as
    'LISTEN <port>'), connect each client to target, delay its data by delays[client address] ms (default_delay for
    others) each way. Exits after lifetime_s or when its parent (the lab) is gone."""
    host, port = target.rsplit(":", 1)
    listen_host, listen_port = listen.rsplit(":", 1)

    async def handle(c_reader, c_writer):
        delay_s = delays.get(c_writer.get_extra_info("peername")[0], default_delay) / 1e3
        try:
            s_reader, s_writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 10)
        except (OSError, TimeoutError):
            c_writer.close()
            return
        for w in (c_writer, s_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_delay_line(c_reader, s_writer, delay_s), _delay_line(s_reader, c_writer, delay_s),
                             return_exceptions=True)
        for w in (c_writer, s_writer):
            w.close()

    async def serve():
        parent = os.getppid()
        try:
            server = await asyncio.start_server(handle, listen_host, int(listen_port))
        except OSError:  # that port is taken here (a relay to another host's same port)
            server = await asyncio.start_server(handle, listen_host, 0)
        print(f"LISTEN {server.sockets[0].getsockname()[1]}", flush=True)
        deadline = time.monotonic() + lifetime_s
        while time.monotonic() < deadline and os.getppid() == parent:
            await asyncio.sleep(0.5)
        server.close()

    asyncio.run(serve())


# ---------------------------------------------------------------------- the transparent delay line
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


def delay_line_main(delays: dict[str, float], lifetime_s: float) -> None:
    """Run inside the switch namespace: make it a router (forwarding, proxy ARP at once, no reverse-path filter),
    open the TUN device DELAY_DEV and print READY; then hold every IPv4 packet routed into it for
    delays[src] + delays[dst] ms and write it back, to be routed on to its host. Order is kept per host pair; at most
    DELAY_LINE_BYTES held. Exits after lifetime_s or when its parent (the lab) is gone."""
    import fcntl
    import heapq
    import struct
    import threading

    _write_sysctls({"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                    "net.ipv4.conf.default.rp_filter": "0", "net.ipv4.conf.all.send_redirects": "0",
                    "net.ipv4.conf.default.send_redirects": "0", "net.ipv4.conf.default.proxy_arp": "1"})
    by_addr = {socket.inet_aton(a): ms / 1e3 for a, ms in delays.items()}
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", DELAY_DEV.encode(), IFF_TUN | IFF_NO_PI))
    held: list[tuple[float, int, bytes]] = []  # (due, arrival number, packet): a heap
    held_bytes = 0
    cv = threading.Condition()
    stop = threading.Event()

    def release():
        nonlocal held_bytes
        while not stop.is_set():
            with cv:
                wait = held[0][0] - time.monotonic() if held else 0.5
                if wait > 0:
                    cv.wait(min(wait, 0.5))
                    continue
                _, _, packet = heapq.heappop(held)
                held_bytes -= len(packet)
            try:
                os.write(fd, packet)
            except OSError:
                pass

    threading.Thread(target=release, daemon=True).start()
    print("READY", flush=True)
    parent, deadline = os.getppid(), time.monotonic() + lifetime_s
    for n in itertools.count():
        if time.monotonic() > deadline or os.getppid() != parent:
            break
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        packet = os.read(fd, 1 << 16)
        if len(packet) < 20 or packet[0] >> 4 != 4 or held_bytes + len(packet) > DELAY_LINE_BYTES:
            continue  # not IPv4, or the line is full: dropped
        due = time.monotonic() + by_addr.get(packet[12:16], 0.0) + by_addr.get(packet[16:20], 0.0)
        with cv:
            heapq.heappush(held, (due, n, packet))
            held_bytes += len(packet)
            cv.notify()
    stop.set()


# ---------------------------------------------------------------------- measurement
def _serve_main(timeout_s: float, max_conns: int = 256) -> None:
    """Measurement server (runs inside host b): per connection, first byte 'S' = sink (replies with bytes received
    and the seconds between first and last byte, as JSON), 'E' = echo; no byte = a connect probe."""
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(64)
    print(f"LISTEN {srv.getsockname()[1]}", flush=True)
    deadline = time.monotonic() + timeout_s
    for _ in range(max_conns):
        if (left := deadline - time.monotonic()) <= 0:
            return
        srv.settimeout(left)
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            return
        with conn:
            conn.settimeout(max(deadline - time.monotonic(), 0.1))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                kind = conn.recv(1)
                if kind == b"S":
                    n, first, last = 0, None, None
                    while chunk := conn.recv(1 << 20):
                        last = time.perf_counter()
                        if first is None:  # the first chunk starts the clock: its bytes are not counted
                            first = last
                        else:
                            n += len(chunk)
                    conn.sendall(json.dumps({"bytes": n, "seconds": (last or 0) - (first or 0)}).encode())
                elif kind == b"E":
                    while chunk := conn.recv(1 << 16):
                        conn.sendall(chunk)
            except OSError:
                pass


def _probe_main(host: str, port: int, nbytes: int, pings: int, timeout_s: float) -> None:
    """Measurement client (runs inside host a): connect times, 64-byte echo round trips, then nbytes to the sink;
    prints one JSON line."""
    addr = (host, port)
    connects, rtts = [], []
    for _ in range(pings):
        t = time.perf_counter()
        socket.create_connection(addr, timeout_s).close()
        connects.append(time.perf_counter() - t)
    with socket.create_connection(addr, timeout_s) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"E")
        msg = b"x" * 64
        for _ in range(pings):
            t = time.perf_counter()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    raise ConnectionError("echo closed")
                got += chunk
            rtts.append(time.perf_counter() - t)
    with socket.create_connection(addr, timeout_s) as s:
        s.sendall(b"S")
        buf = memoryview(bytes(1 << 16))
        sent = 0
        while sent < nbytes:
            sent += s.send(buf[: min(len(buf), nbytes - sent)])
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    sink = json.loads(reply)
    print(json.dumps({"mbit_s": sink["bytes"] * 8 / sink["seconds"] / 1e6 if sink["seconds"] > 0 else float("inf"),
                      "connect_ms": statistics.median(connects) * 1e3, "rtt_ms": statistics.median(rtts) * 1e3,
                      "bytes": sent}))


def measure(lab: Lab, a: int, b: int, nbytes: int | None = None, pings: int = 20, delayed: bool = False,
            timeout_s: float = 20.0) -> dict[str, float]:
    """Throughput a->b (Mbit/s of TCP payload) and median TCP connect / 64-byte echo round trip (ms), measured with
    plain sockets inside the two namespaces. delayed=True connects to `delayed_addr` (through a relay the connect is
    not delayed; with transparent_delay every connection is delayed anyway). nbytes defaults to ~0.4 s worth at the
    path's rate (1 to 32 MB)."""
    if nbytes is None:
        rates = [r for r in (lab.rates[a], lab.rates[b]) if r]
        nbytes = int(min(max(min(rates) * 1e6 / 8 * 0.4, 1e6), 32e6)) if rates else 32 * 10**6
    server = lab.run(b, [sys.executable, _HERE, "_serve", "--timeout", str(timeout_s)], stdout=subprocess.PIPE,
                     text=True)
    server_port = -1
    try:
        server_port = int(_read_line(server, 10.0).split()[1])
        host, port = lab.delayed_addr(b, server_port) if delayed else (lab.addr(b), server_port)
        client = lab.run(a, [sys.executable, _HERE, "_probe", host, str(port), str(nbytes), str(pings),
                             str(timeout_s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = client.communicate(timeout=timeout_s + 10)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"measure {a}->{b}: probe timed out") from e
        if client.returncode:
            raise LabError(f"measure {a}->{b}: {err.strip()}")
        return json.loads(out)
    finally:
        lab.stop_relay(b, server_port)
        _stop(server, 1.0)


# ---------------------------------------------------------------------- gloo across namespaces
def _tcp_peers() -> list[str]:
    """Remote ip:port of this namespace's established TCP connections (from /proc/net/tcp and tcp6)."""
    peers = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] != "01":  # ESTABLISHED
                    continue
                ip_hex, port_hex = fields[2].split(":")
                raw = b"".join(bytes.fromhex(ip_hex[k:k + 8])[::-1] for k in range(0, len(ip_hex), 8))
                ip = ipaddress.ip_address(raw)
                ip = getattr(ip, "ipv4_mapped", None) or ip
                peers.append(f"{ip}:{int(port_hex, 16)}")
    return sorted(peers)


def _gloo_rank_main(rank: int, master: str, nbytes: int, reps: int, pings: int, timeout_s: float) -> None:
    """One of two gloo ranks: rendezvous at master, all_reduce and send/recv an nbytes tensor, small ping-pongs;
    rank 0 prints the timings as JSON, rank 1 the TCP peers it is connected to."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    t0 = time.perf_counter()
    dist.init_process_group("gloo", init_method=f"tcp://{master}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=timeout_s))
    init_s = time.perf_counter() - t0
    x = torch.full((nbytes // 4,), float(rank + 1))
    dist.barrier()
    t = time.perf_counter()
    dist.all_reduce(x)
    all_reduce_s = time.perf_counter() - t
    ok = bool((x == 3.0).all())
    payload, one = torch.ones(nbytes // 4), torch.zeros(1)
    sends, rtts = [], []
    for _ in range(reps):  # rank 0 times send + a one-element ack: the payload's one-way transfer
        dist.barrier()
        t = time.perf_counter()
        if rank == 0:
            dist.send(payload, 1)
            dist.recv(one, 1)
        else:
            dist.recv(payload, 0)
            ok = ok and bool((payload == 1.0).all())
            dist.send(one, 0)
        sends.append(time.perf_counter() - t)
    for _ in range(pings):
        t = time.perf_counter()
        if rank == 0:
            dist.send(one, 1)
            dist.recv(one, 1)
        else:
            dist.recv(one, 0)
            dist.send(one, 0)
        rtts.append(time.perf_counter() - t)
    peers = _tcp_peers()
    dist.barrier()
    dist.destroy_process_group()
    send_s = statistics.median(sends)
    print(json.dumps({"rank": rank, "ok": ok, "init_s": round(init_s, 3), "all_reduce_ms": round(all_reduce_s * 1e3, 2),
                      "send_recv_ms": round(send_s * 1e3, 2), "send_mbit_s": round(nbytes * 8 / send_s / 1e6, 1),
                      "pingpong_ms": round(statistics.median(rtts) * 1e3, 3), "tcp_peers": peers}), flush=True)


def _wait_listening(lab: Lab, i: int, port: int, timeout_s: float) -> None:
    """Block until something listens on host i's port (polls the namespace's socket table; bounded by timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = _cmd(["ip", "netns", "exec", lab.hosts[i], "ss", "-Htln", f"sport = :{port}"], check=False)
        if out.strip():
            return
        time.sleep(0.1)
    raise LabError(f"nothing listens on host {i} port {port} after {timeout_s:g} s")


def gloo_pair(lab: Lab, master: tuple[str, int], nbytes: int = 1 << 20, reps: int = 5, pings: int = 20,
              timeout_s: float = 60.0) -> list[dict]:
    """Run two gloo ranks on hosts 0 and 1 with rendezvous at master (rank 0's store runs on host 0, GLOO_PORT);
    return both ranks' reports."""
    argv = [sys.executable, _HERE, "_gloo-rank", "--master", f"{master[0]}:{master[1]}", "--bytes", str(nbytes),
            "--reps", str(reps), "--pings", str(pings), "--timeout", str(timeout_s)]
    procs = [lab.run(0, [*argv, "--rank", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    try:
        _wait_listening(lab, 0, GLOO_PORT, timeout_s)  # a relay would pass a refused store connection on as a close
        procs.append(lab.run(1, [*argv, "--rank", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        reports = []
        for rank, proc in enumerate(procs):
            out, err = proc.communicate(timeout=timeout_s + 10)
            if proc.returncode:
                raise LabError(f"gloo rank {rank} failed ({proc.returncode}): {err.strip()[-2000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            _stop(proc, 1.0)


def gloo_check(rate_mbit: float = 100.0, delay_ms: float = 2.0) -> dict:
    """Two gloo ranks in two namespaces over rate_mbit links: all_reduce and send/recv of 1 MB; rendezvous direct,
    rendezvous through the delay relay (does gloo's own traffic get the delay?), and with transparent_delay."""
    res: dict = {"rate_mbit": rate_mbit, "one_way_ms": 2 * delay_ms}
    with Lab(2, rate_mbit=rate_mbit, delay_ms=delay_ms) as lab:
        res["direct"] = (f"{lab.addr(0)}:{GLOO_PORT}", gloo_pair(lab, (lab.addr(0), GLOO_PORT)))
        relay = lab.delayed_addr(0, GLOO_PORT)
        res["rendezvous via relay"] = (f"{relay[0]}:{relay[1]}", gloo_pair(lab, relay))
    with Lab(2, rate_mbit=rate_mbit, delay_ms=delay_ms, transparent_delay=True) as lab:
        res["transparent_delay"] = (f"{lab.addr(0)}:{GLOO_PORT}", gloo_pair(lab, (lab.addr(0), GLOO_PORT)))
    return res


# ---------------------------------------------------------------------- command line
def _require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("netlab needs root (network namespaces, tc)")


def _selftest(rate_mbit: float, delay_ms: float, transparent: bool = False) -> int:
    with Lab(2, rate_mbit=rate_mbit, delay_ms=delay_ms, transparent_delay=transparent) as lab:
        prefix = lab.prefix
        how = "every packet (transparent delay line)" if transparent else "connections through the relay"
        print(f"lab {prefix}*: 2 hosts, {rate_mbit:g} Mbit/s and {delay_ms:g} ms per link; one-way 0->1 "
              f"{lab.one_way_ms(0, 1):g} ms for {how}")
        for delayed in (False, True):
            m = measure(lab, 0, 1, delayed=delayed)
            print(f"  0->1 {'delayed_addr' if delayed else 'addr        '}: {m['mbit_s']:7.2f} Mbit/s  "
                  f"echo RTT {m['rtt_ms']:6.2f} ms  connect {m['connect_ms']:5.2f} ms")
    left = [ns for ns in namespaces() if ns.startswith(prefix)]
    print("teardown: " + (f"LEFT OVER {left}" if left else f"no namespace {prefix}* left"))
    return 1 if left else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("selftest", help="2 hosts, shaped: measure rate and RTT, tear down, check nothing is left")
    s.add_argument("--rate", type=float, default=100.0)
    s.add_argument("--delay", type=float, default=2.0, help="ms per link")
    s.add_argument("--transparent", action="store_true", help="delay every packet (TUN delay line), not a relay")
    g = sub.add_parser("gloo-check", help="gloo all_reduce and 1 MB send/recv between two namespaces")
    g.add_argument("--rate", type=float, default=100.0)
    g.add_argument("--delay", type=float, default=2.0, help="ms per link")
    c = sub.add_parser("cleanup", help="delete leftover lab namespaces")
    c.add_argument("prefix", nargs="?")
    r = sub.add_parser("relay")  # internal: started by Lab.delayed_addr
    r.add_argument("--listen", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--delays", default="{}")
    r.add_argument("--default-delay", type=float, default=0.0)
    r.add_argument("--lifetime", type=float, default=6 * 3600.0)
    d = sub.add_parser("delay-line")  # internal: started by Lab(transparent_delay=True)
    d.add_argument("--delays", default="{}")
    d.add_argument("--lifetime", type=float, default=6 * 3600.0)
    v = sub.add_parser("_serve")  # internal: measure()
    v.add_argument("--timeout", type=float, default=20.0)
    q = sub.add_parser("_probe")
    for name in ("host", "port", "nbytes", "pings", "timeout"):
        q.add_argument(name)
    k = sub.add_parser("_gloo-rank")  # internal: gloo_pair()
    k.add_argument("--rank", type=int, required=True)
    k.add_argument("--master", required=True)
    k.add_argument("--bytes", type=int, default=1 << 20)
    k.add_argument("--reps", type=int, default=3)
    k.add_argument("--pings", type=int, default=20)
    k.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)

    if a.cmd == "relay":
        relay_main(a.listen, a.target, json.loads(a.delays), a.default_delay, a.lifetime)
    elif a.cmd == "delay-line":
        delay_line_main(json.loads(a.delays), a.lifetime)
    elif a.cmd == "_serve":
        _serve_main(a.timeout)
    elif a.cmd == "_probe":
        _probe_main(a.host, int(a.port), int(a.nbytes), int(a.pings), float(a.timeout))
    elif a.cmd == "_gloo-rank":
        _gloo_rank_main(a.rank, a.master, a.bytes, a.reps, a.pings, a.timeout)
    else:
        _require_root()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a kill tears the lab down too
        if a.cmd == "selftest":
            return _selftest(a.rate, a.delay, a.transparent)
        if a.cmd == "gloo-check":
            return _print_gloo_check(gloo_check(a.rate, a.delay))
        if a.cmd == "cleanup":
            print("\n".join(cleanup_stale(a.prefix)) or "nothing to clean")
    return 0


def _print_gloo_check(res: dict) -> int:
    print(f"gloo, 2 ranks in 2 namespaces, {res['rate_mbit']:g} Mbit/s links, {res['one_way_ms']:g} ms one-way "
          f"delay configured, every rank with GLOO_SOCKET_IFNAME={IFNAME}")
    ok = True
    base = res["direct"][1][0]["pingpong_ms"]
    for key in ("direct", "rendezvous via relay", "transparent_delay"):
        master, (r0, r1) = res[key]
        ok = ok and r0["ok"] and r1["ok"]
        print(f"  {key}: init_method tcp://{master}  ok={r0['ok'] and r1['ok']}  init {r0['init_s']:.2f} s")
        print(f"    all_reduce 1 MB {r0['all_reduce_ms']:.1f} ms, send 1 MB {r0['send_recv_ms']:.1f} ms "
              f"({r0['send_mbit_s']:.1f} Mbit/s), ping-pong {r0['pingpong_ms']:.2f} ms "
              f"(+{r0['pingpong_ms'] - base:.2f} ms; a delayed path adds {2 * res['one_way_ms']:g} ms)")
        print(f"    rank 1 is connected to: {', '.join(r1['tcp_peers'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
