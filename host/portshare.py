"""One process owns the serial port; the others reach the board through it.

A serial port has one reader: while `invtable monitor` (or any long-running
command) holds it, `invtable stop` from another terminal would find it busy.
So the owner also listens on a local Unix socket named after the port, in a
directory only its user can enter (mode 0700; the socket 0600), and relays
every request line it receives to the board with its own client, and every
event the board sends to whoever is connected. STOP jumps the queue.

The other side, ``connect_shared``, is an ordinary ``client.Client`` whose
link is that socket instead of the serial port, so every command works the
same either way. Standard library only (socketserver, socket, threading).
"""

import contextlib
import hashlib
import json
import os
import queue
import socket
import socketserver
import tempfile
import threading
from pathlib import Path

from invtable.host import client as client_mod

# How long a relayed request may wait for the owner's loop plus the board.
RELAY_TIMEOUT_S = 10.0


def socket_dir():
    """This user's directory for the sockets, created owner-only."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"invtable-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise client_mod.ConnectionProblem(
            f"{path} is not private to you (owner {info.st_uid}, mode {info.st_mode & 0o777:o}): "
            "remove it and try again")
    return path


def socket_path(port):
    """The owner's socket for serial ``port`` (the same for every spelling of it)."""
    key = os.path.realpath(port) if "://" not in port else port
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    return socket_dir() / f"{name}.sock"


class _Request:
    def __init__(self, line):
        self.line = line
        self.reply = None
        self.done = threading.Event()


class _Handler(socketserver.StreamRequestHandler):
    def setup(self):
        super().setup()
        self.server.share._joined(self.wfile)

    def handle(self):
        share = self.server.share
        answered = {}  # line -> reply: a resend (a reply lost or late) is not done twice
        for raw in self.rfile:
            line = raw.strip()
            if not line:
                continue
            if line in answered:
                share._write(self.wfile, answered[line])
                continue
            request = _Request(line)
            share._enqueue(request)
            if not request.done.wait(RELAY_TIMEOUT_S):
                continue  # the client's own timeout reports it
            answered[line] = request.reply
            if len(answered) > 8:
                answered.pop(next(iter(answered)))
            share._write(self.wfile, request.reply)

    def finish(self):
        self.server.share._left(self.wfile)
        super().finish()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class PortShare:
    """Serve ``board`` (an open client.Client that owns the port) to the other
    invtable processes. Call ``pump()`` from the owner's loop (it relays the
    queued requests) and ``broadcast(event)`` for each event the owner reads."""

    def __init__(self, board):
        self.board = board
        self.path = socket_path(board.port)
        self._queue = queue.PriorityQueue()
        self._seq = 0
        self._lock = threading.Lock()
        self._clients = []
        self.relayed = 0
        if self.path.exists():
            if _owner_alive(self.path):
                raise client_mod.PortBusyError(
                    f"another invtable process already shares {board.port}")
            self.path.unlink()  # left by an owner that died
        old_umask = os.umask(0o177)
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._server.share = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the socket side (server threads) ------------------------------------
    def _enqueue(self, request):
        with self._lock:
            self._seq += 1
            seq = self._seq
        try:
            cmd = json.loads(request.line).get("cmd")
        except (ValueError, AttributeError):
            cmd = None
        self._queue.put((0 if cmd == "stop" else 1, seq, request))  # STOP goes first

    def _joined(self, wfile):
        with self._lock:
            self._clients.append(wfile)

    def _left(self, wfile):
        with self._lock:
            if wfile in self._clients:
                self._clients.remove(wfile)

    def _write(self, wfile, message):
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._lock, contextlib.suppress(OSError, ValueError):
            wfile.write(data)
            wfile.flush()

    # -- the owner's side -------------------------------------------------
    def pump(self, max_requests=8):
        """Relay up to ``max_requests`` queued requests to the board (the
        owner's thread: the only one that touches the port)."""
        for _ in range(max_requests):
            try:
                _prio, _seq, request = self._queue.get_nowait()
            except queue.Empty:
                return
            request.reply = self._relay(request.line)
            self.relayed += 1
            request.done.set()

    def _relay(self, line):
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("cmd"), str):
            return {"id": None, "ok": False,
                    "error": {"code": "bad_json", "message": "not a request object"}}
        rid = message.pop("id", None)
        cmd = message.pop("cmd")
        try:
            data = self.board.request(cmd, **message)
        except client_mod.ProtocolError as error:
            return {"id": rid, "ok": False,
                    "error": dict(error.details, code=error.code, message=error.message)}
        except client_mod.ConnectionProblem as error:
            return {"id": rid, "ok": False, "error": {"code": "relay", "message": str(error)}}
        return {"id": rid, "ok": True, "data": data}

    def broadcast(self, event):
        """An event the owner read: to every connected process too."""
        with self._lock:
            clients = list(self._clients)
        for wfile in clients:
            self._write(wfile, event)


def _owner_alive(path):
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class _SocketLink:
    """The bits of a pyserial port that client.Client uses, over a Unix socket."""

    def __init__(self, path):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._sock.settimeout(0.05)

    @property
    def in_waiting(self):
        return 0

    def read(self, size=1):
        try:
            data = self._sock.recv(max(size, 4096))
        except TimeoutError:
            return b""
        if not data:
            raise OSError("the invtable process that owns the port has closed it")
        return data

    def write(self, data):
        self._sock.sendall(data)
        return len(data)

    def flush(self):
        pass

    def close(self):
        self._sock.close()


def connect_shared(port, timeout=client_mod.DEFAULT_TIMEOUT_S):
    """A Client that reaches the board through the process that owns ``port``,
    or None when no such process is running."""
    path = socket_path(port)
    if not path.exists():
        return None
    try:
        link = _SocketLink(path)
    except OSError:
        return None
    return client_mod.Client(port, timeout=timeout, link=link)
