"""Render a local HTML file in headless Chromium and report its images and console errors.

Standard library only: the DevTools protocol is spoken over ``--remote-debugging-pipe``
(NUL-terminated JSON; the browser reads commands on fd 3 and writes replies/events on fd 4).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Collects one entry per <img>, in document order; the load event has already fired.
_IMAGES_JS = """Array.from(document.images, img => ({
    src_prefix: (img.getAttribute('src') || '').slice(0, 40),
    natural_width: img.naturalWidth,
    natural_height: img.naturalHeight,
    complete: img.complete,
}))"""


@dataclass
class PageCheck:
    images: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: $CHROMIUM if set, else the first one on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((p for p in map(shutil.which, names) if p), None)


class _Browser:
    """A Chromium process plus the DevTools pipe to it."""

    def __init__(self, binary: str, workdir: Path, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.stderr_path = workdir / "stderr.log"
        cmd_r, self.cmd_w = os.pipe()  # we write commands, the browser reads them as fd 3
        self.out_r, out_w = os.pipe()  # the browser writes replies as fd 4, we read them
        # Move the child's ends above 3/4 so the dup2 calls below cannot clobber each other.
        child_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(out_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r), os.close(out_w)

        def wire_fds() -> None:  # runs in the child between fork and exec
            os.dup2(child_r, 3)  # os.dup2 makes the copies inheritable
            os.dup2(child_w, 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--remote-debugging-pipe",
                f"--user-data-dir={workdir / 'profile'}", "about:blank"]
        try:
            with open(self.stderr_path, "wb") as stderr:
                # close_fds=False: close_fds would run after preexec_fn and close fds 3/4
                # again; everything else Python opens is non-inheritable anyway.
                self.proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    close_fds=False, preexec_fn=wire_fds, start_new_session=True)
        except OSError as exc:
            os.close(self.cmd_w), os.close(self.out_r)
            raise RuntimeError(f"could not start Chromium {binary!r}: {exc}") from exc
        finally:
            os.close(child_r), os.close(child_w)
        self.buffer = b""
        self.next_id = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def wait_for(self, what: str, match: Callable[[dict], bool],
                 on_event: Callable[[dict], None]) -> dict:
        """Read messages (handing every event to on_event) until one satisfies match."""
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    on_event(msg)
                if match(msg):
                    if "error" in msg:
                        raise RuntimeError(f"Chromium refused {what}: {msg['error']}")
                    return msg
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"Chromium timed out ({self.timeout:g}s) waiting for {what}")
            if select.select([self.out_r], [], [], min(left, 0.5))[0]:
                chunk = os.read(self.out_r, 1 << 16)
                if not chunk:  # EOF: the browser closed its end, i.e. it died
                    code = self.proc.wait(timeout=5)
                    tail = self.stderr_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"Chromium exited (code {code}) while waiting for "
                                       f"{what}; stderr tail:\n{tail}")
                self.buffer += chunk

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             on_event: Callable[[dict], None] = lambda m: None) -> dict:
        cid = self.send(method, params, session)
        return self.wait_for(method, lambda m: m.get("id") == cid, on_event).get("result", {})

    def close(self) -> None:
        try:  # polite first, so the browser flushes and its helper processes exit
            self.send("Browser.close")
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            try:  # the whole session we started: browser plus renderer/zygote children
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        finally:
            os.close(self.cmd_w), os.close(self.out_r)


def _error_text(event: dict, urls: dict[str, str]) -> str | None:
    """The error an event reports, or None if it is not an error."""
    method, p = event["method"], event.get("params", {})
    if method == "Runtime.consoleAPICalled" and p.get("type") == "error":
        args = p.get("args", [])
        return "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in args)
    if method == "Runtime.exceptionThrown":
        details = p["exceptionDetails"]
        return "exception: " + details.get("exception", {}).get("description", details["text"])
    if method == "Log.entryAdded" and p["entry"]["level"] == "error":
        entry = p["entry"]
        return f"log[{entry['source']}]: {entry['text']} {entry.get('url', '')}".rstrip()
    if method == "Network.loadingFailed":
        return f"network: {p['errorText']} {urls.get(p['requestId'], '')}".rstrip()
    return None


def check_page(html_path: Path, timeout: float = 30.0) -> PageCheck:
    """Load html_path in headless Chromium; return its images and every error it reported."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no Chromium found (set $CHROMIUM or install chromium)")
    result, urls = PageCheck(), {}  # urls: requestId -> URL, since loadingFailed lacks it

    def on_event(event: dict) -> None:
        if event["method"] == "Network.requestWillBeSent":
            urls[event["params"]["requestId"]] = event["params"]["request"]["url"][:80]
        elif (text := _error_text(event, urls)) is not None:
            result.errors.append(text)

    # ignore_cleanup_errors: a dying helper process may still be touching the profile.
    with tempfile.TemporaryDirectory(prefix="ssvae-chromium-", ignore_cleanup_errors=True) as tmp:
        browser = _Browser(binary, Path(tmp), timeout)
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget",
                                   {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                browser.call(f"{domain}.enable", session=session, on_event=on_event)
            nav = browser.call("Page.navigate", {"url": Path(html_path).resolve().as_uri()},
                               session=session, on_event=on_event)
            if "errorText" in nav:
                raise RuntimeError(f"navigation to {html_path} failed: {nav['errorText']}")
            browser.wait_for("Page.loadEventFired",
                             lambda m: m.get("method") == "Page.loadEventFired", on_event)
            value = browser.call("Runtime.evaluate", {"expression": _IMAGES_JS,
                                                      "returnByValue": True},
                                 session=session, on_event=on_event)
            result.images = value["result"]["value"]
        finally:
            browser.close()
    return result
