"""What the browser tests share: the live portal server, the mail it writes, screenshots."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.support.live import ROOT, LiveGateway

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


class PortalServer(LiveGateway):
    """A LiveGateway serving the project, mail written to files."""

    mail_dir: Path

    def mail_to(self, address: str, *, after: float = 0.0, timeout: float = 10.0) -> str:
        """The newest mail file holding this address, written after `after` (a time.time())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in sorted(self.mail_dir.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True):
                text = path.read_text(errors="replace")
                if path.stat().st_mtime >= after and f"To: {address}" in text:
                    return text
            time.sleep(0.1)
        raise AssertionError(f"no mail to {address} in {self.mail_dir}")


def link_in(mail: str, fragment: str) -> str:
    return next(url for url in re.findall(r"https?://\S+", mail) if fragment in url)


def shot(page, name: str) -> Path:  # noqa: ANN001
    path = ARTIFACTS / f"portal-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
