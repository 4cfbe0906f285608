"""The HTML report in headless Chromium (Debian's `chromium`, installed by
`scripts/bootstrap.sh --dev`), with no network: a proxy that answers nothing is its only
route, so anything the page would fetch shows up as a request. ``chromium(...)`` runs it
(``--dump-dom``, ``--screenshot``, ``--print-to-pdf``), ``Dom`` reads the rendered page's
charts and tables back.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path


class Proxy:
    """A proxy that answers nothing and records every request Chromium makes through it.

    Chromium is started with it as its only route (loopback included), so any fetch by the
    page (a CDN script, a font, an image) shows up here instead of reaching a network.
    """

    #: Chromium's own background calls (update checks, clock), not the page's.
    BROWSER_HOSTS = ("google.com", "googleapis.com", "gvt1.com", "gstatic.com")

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.requests.append(conn.recv(300).decode("latin-1").split("\r\n")[0])
                except OSError as exc:
                    self.requests.append(repr(exc))

    def page_requests(self) -> list[str]:
        return [
            r
            for r in self.requests
            if not any(re.search(rf"[/ .]{re.escape(h)}[:/ ]", r) for h in self.BROWSER_HOSTS)
        ]

    def close(self) -> None:
        self.sock.close()


def chromium(page: Path, profile: Path, proxy: Proxy, *args: str) -> tuple[str, str]:
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed (bash scripts/bootstrap.sh installs it)"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--proxy-server=127.0.0.1:{proxy.port}",
        "--proxy-bypass-list=<-loopback>",  # loopback goes through the proxy too
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr


class Dom(HTMLParser):
    """The rendered DOM's chart figures: per chart, its attributes and its marks."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, str]] = {}
        self.marks: dict[str, list[tuple[str, dict[str, str]]]] = {}
        #: table id -> the attributes of its body rows
        self.rows: dict[str, list[dict[str, str]]] = {}
        #: table id -> the text of each cell, row by row (header rows included)
        self.cells: dict[str, list[list[str]]] = {}
        self.ready = False
        self._chart: str | None = None
        self._table: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "html" and a.get("data-ready") == "1":
            self.ready = True
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.rows[self._table] = []
            self.cells[self._table] = []
        elif tag == "tr" and self._table is not None:
            if a:
                self.rows[self._table].append(a)
            self.cells[self._table].append([])
        elif tag in ("td", "th") and self._table is not None and self.cells[self._table]:
            self.cells[self._table][-1].append("")
        if tag == "figure" and "data-chart" in a:
            self._chart = a["data-chart"]
            self.charts[self._chart] = a
            self.marks[self._chart] = []
        elif self._chart is not None:
            self.marks[self._chart].append((tag, a))

    def handle_data(self, data: str) -> None:
        if self._table is not None and self.cells[self._table] and self.cells[self._table][-1]:
            self.cells[self._table][-1][-1] += data.strip()

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._chart = None
        if tag == "table":
            self._table = None

    def of(self, chart: str, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.marks[chart] if t == tag and cls in a.get("class", "").split()]


def render(page: Path, workdir: Path) -> tuple[Dom, str, list[str]]:
    """``page`` as Chromium renders it: (its DOM, Chromium's log, what the page fetched)."""
    proxy = Proxy()
    try:
        text, log = chromium(page, workdir / f"chromium-dom-{page.stem}", proxy, "--dump-dom")
    finally:
        proxy.close()
    dom = Dom()
    dom.feed(text)
    return dom, log, proxy.page_requests()


def screenshot(page: Path, shot: Path, size: tuple[int, int] = (1400, 2600)) -> Path:
    """A PNG of ``page`` as Chromium draws it, at ``size`` (checked: a PNG of that size)."""
    proxy = Proxy()
    try:
        chromium(
            page,
            shot.parent / f"chromium-shot-{shot.stem}",
            proxy,
            f"--screenshot={shot}",
            f"--window-size={size[0]},{size[1]}",
            "--hide-scrollbars",
        )
    finally:
        proxy.close()
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n", shot
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == size
    return shot
