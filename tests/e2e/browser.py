"""A responder's browser: Debian's chromium (no browser download), headless, driven by Playwright,
on the web client the appliance serves. It trusts the launch's ACME root the way a responder's
machine would be told to (an NSS certificate database in the profile's home: `certutil`, not
--ignore-certificate-errors) and finds the appliance's names by a host-resolver rule (the README
says how a responder does the same).

Async (Playwright's async API) so that it shares one event loop with the nio clients; the tests
drive it through `Loop.run`. Every step can leave a screenshot under build/reports/.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
T = TypeVar("T")


class Loop:
    """One event loop in its own thread for a test session's browsers and clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def trusting_home(home: Path, ca_file: str) -> Path:
    """A home directory whose NSS database (what Chromium on Linux reads) trusts `ca_file`."""
    nssdb = home / ".pki/nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
    subprocess.run(
        ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "outband-acme-root", "-t", "C,,", "-i", ca_file],
        check=True,
        capture_output=True,
    )
    return home


class Browsers:
    """Chromium, launched once; each responder gets their own context (profile, storage, service worker)."""

    def __init__(self, home: Path, domain: str, address: str, reports: Path):
        self.home, self.domain, self.address, self.reports = home, domain, address, reports
        self._playwright: Any = None
        self.browser: Browser | None = None

    async def start(self) -> None:
        self._playwright = await async_playwright().start()
        self.browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            env={"HOME": str(self.home)},
            args=[
                f"--host-resolver-rules=MAP *.{self.domain} {self.address}, MAP {self.domain} {self.address}",
                # Chromium's own background traffic would go to Google: this machine may reach no one.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-sandbox",  # CI runs as root
            ],
        )

    async def stop(self) -> None:
        if self.browser is not None:
            await self.browser.close()
        if self._playwright is not None:
            await self._playwright.stop()

    async def responder(self, who: str) -> Responder:
        assert self.browser is not None
        context = await self.browser.new_context(viewport={"width": 1280, "height": 800})
        return Responder(who, context, await context.new_page(), self)


class Responder:
    """One person in one browser profile, using Hydrogen as a person does: labels, buttons, text."""

    def __init__(self, who: str, context: BrowserContext, page: Page, browsers: Browsers):
        self.who, self.context, self.page, self.browsers = who, context, page, browsers
        self.shots: list[Path] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    @property
    def url(self) -> str:
        return f"https://element.{self.browsers.domain}/"

    async def shot(self, step: str) -> Path:
        self.browsers.reports.mkdir(parents=True, exist_ok=True)
        path = self.browsers.reports / f"{len(self.shots) + 1:02d}-{self.who}-{step}.png"
        await self.page.screenshot(path=str(path))
        self.shots.append(path)
        print(f"screenshot: {path}")
        return path

    async def sign_in(self, user: str, password: str, room: str | None = "control") -> float:
        """Sign in through the served web client; returns the seconds until `room` is listed (or,
        without one, until the session's room list is there)."""
        started = time.monotonic()
        await self.page.goto(self.url)
        await self.page.get_by_label("Username").fill(user)
        await self.page.get_by_label("Password").fill(password)
        await self.shot("sign-in")
        await self.page.get_by_role("button", name="Log In").click()
        if room:
            await self.page.get_by_text(room, exact=True).first.wait_for(timeout=120_000)
        else:
            await self.page.get_by_placeholder("Filter rooms…").wait_for(timeout=120_000)
        elapsed = time.monotonic() - started
        await self.shot("signed-in")
        return elapsed

    async def open_control(self) -> None:
        await self.page.get_by_text("control", exact=True).first.click()
        accept = self.page.get_by_role("button", name="Accept")
        # The room opens as an invite (Accept) or, once joined, with its composer: wait for either.
        # Checking for Accept at once missed an invite the page had not drawn yet (a freshly
        # launched appliance answers slowly), and then waited for a composer that never comes.
        await accept.or_(self.composer()).first.wait_for(timeout=120_000)
        if await accept.count():
            await self.shot("invited")
            await accept.click()
        await self.composer().wait_for(timeout=120_000)
        await self.shot("in-control")

    def composer(self):
        return self.page.get_by_placeholder("Send an encrypted message…")

    async def send(self, text: str) -> None:
        await self.composer().fill(text)
        await self.composer().press("Enter")

    async def sees(self, text: str, timeout: float = 90) -> bool:
        try:
            await self.page.get_by_text(text).first.wait_for(timeout=timeout * 1000)
            return True
        except Exception:
            return False

    async def send_file(self, path: Path) -> None:
        await self.page.get_by_title("Pick attachment").click()
        async with self.page.expect_file_chooser() as chooser:
            await self.page.get_by_role("menu").get_by_role("button", name="Send file").click()
        await (await chooser.value).set_files(str(path))

    async def session_key(self) -> tuple[str, str]:
        """(Session ID, Session key) as Hydrogen's settings show them."""
        await self.page.get_by_title("Settings").click()
        rows = self.page.locator(".row")
        await self.page.get_by_text("Session key").first.wait_for()
        found: dict[str, str] = {}
        for i in range(await rows.count()):
            label = (await rows.nth(i).locator(".label").inner_text()).strip()
            if label in ("Session ID", "Session key"):
                found[label] = (await rows.nth(i).locator(".content").inner_text()).strip()
        await self.shot("settings-session-key")
        await self.page.go_back()
        return found["Session ID"], found["Session key"]

    async def close(self) -> None:
        await self.context.close()
