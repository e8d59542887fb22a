"""``make run``: the relay on its embedded defaults, ready to try.

Without ``DOIT_API_KEY`` there is no real API to talk to, so this starts the
DoiT API emulator beside the relay, points the relay at it and says so: a
newcomer sees real tickets without a DoiT account, and no real ticket is
ever created by accident.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

EMULATOR_BIND = os.environ.get("RELAY_EMULATOR_BIND", "127.0.0.1:8081")


def _wait_for(url: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def main() -> int:
    env = dict(os.environ)
    relay = [sys.executable, "-m", "relay.cli"]
    emulator: subprocess.Popen[bytes] | None = None
    scratch = ""

    if not env.get("DOIT_API_KEY"):
        url = f"http://{EMULATOR_BIND}"
        emulator = subprocess.Popen(
            [*relay, "--log-format", "text", "emulator", "--bind", EMULATOR_BIND]
        )
        if not _wait_for(f"{url}/_emulator/stats") or emulator.poll() is not None:
            print(
                f"the DoiT API emulator did not start on {EMULATOR_BIND} "
                "(is the port taken? set RELAY_EMULATOR_BIND)",
                file=sys.stderr,
            )
            emulator.terminate()
            return 1
        env["DOIT_API_URL"] = url
        env["DOIT_API_KEY"] = "emulator-key"
        env.setdefault("RELAY_DEFAULT_CATEGORY", "general")
        store_note = ""
        if not env.get("RELAY_STORE"):
            # the emulator forgets its tickets when it stops, so the relay's
            # dedup state must not outlive it either: a fresh store each run
            scratch = tempfile.mkdtemp(prefix="relay-run-")
            env["RELAY_STORE"] = f"sqlite:///{scratch}/relay.db"
            store_note = f"  Dedup state and queue: {scratch} (removed on exit).\n"
        print(
            "\n"
            "  DOIT_API_KEY is not set: tickets go to the DoiT API EMULATOR at\n"
            f"  {url} (in memory; nothing reaches DoiT).\n"
            f"{store_note}"
            f"  See them with:  DOIT_API_URL={url} DOIT_API_KEY=x .venv/bin/relay"
            " tickets list\n"
            "  Set DOIT_API_KEY to send real tickets.\n",
            flush=True,
        )

    server = subprocess.Popen([*relay, "--log-format", "text", "serve"], env=env)
    stop = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        server.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        code = server.wait()
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(timeout=10)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0 if stop else code


if __name__ == "__main__":
    sys.exit(main())
