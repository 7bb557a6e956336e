"""The real roostd binary on 127.0.0.1, for the interop tests.

Port 0, the port read from the `listening on` log line; stderr is read for
the whole life of the server (a full pipe would block its logging). The
binary comes from $ROOSTD_BIN (default: target/debug/roostd).
"""

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "interop-secret-0123456789abcdef-0123456789"  # >= 32 bytes
TIMEOUT = 5.0


def binary():
    path = os.environ.get("ROOSTD_BIN") or str(ROOT / "target" / "debug" / "roostd")
    if not Path(path).exists():
        pytest.fail(f"no server binary at {path}: run `cargo build` or set ROOSTD_BIN")
    return path


class Server:
    """One roostd process; `extra_args` go after `serve`'s own."""

    def __init__(self, *extra_args, env_secret=SECRET, data=None, prefix="roostd-interop-"):
        self.tmp = tempfile.TemporaryDirectory(prefix=prefix)
        data = data or str(Path(self.tmp.name) / "data")
        env = dict(os.environ, RUST_LOG="info")
        env.pop("ROOSTD_SECRET", None)
        if env_secret is not None:
            env["ROOSTD_SECRET"] = env_secret
        self.proc = subprocess.Popen(
            [binary(), "serve", "--listen", "127.0.0.1:0", "--data", data, *[str(a) for a in extra_args]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log = []
        self.port = None
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()
        if not ready.wait(10) or self.port is None:
            self.stop()
            pytest.fail("roostd did not start:\n" + "\n".join(self.log))

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, scheme="wss", path="/ws"):
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def wait_log(self, pattern, timeout=TIMEOUT):
        """The first log line matching `pattern` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        pytest.fail(f"no log line matching {pattern!r}:\n" + "\n".join(self.log))

    def stop(self):
        """SIGTERM, as an operator would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(2)
        self.tmp.cleanup()
        return self.proc.returncode
