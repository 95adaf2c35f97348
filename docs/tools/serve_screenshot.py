"""Make docs/img/serve-page.png: start `chipfuse serve` on the default system, ask the page one question in
headless Chromium (Debian's, via Playwright), wait for the dies' own counts to reach it, and screenshot it.

    python docs/tools/serve_screenshot.py [--out docs/img/serve-page.png]

Prints the figures the caption quotes (predicted and measured tokens/s, each die's busy share, each link's
traffic and where it comes from)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from chipfuse.runtime.executor import free_port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/serve-page.png"))
    ap.add_argument("--question", default="What is the capital of France, and what river runs through it?")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "chipfuse.cli.main", "serve", "--port", str(port)],
                                stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    sys.exit(f"the server ended: see {log.name}")
                time.sleep(0.5)
            else:
                sys.exit("the server did not answer /health within 180 s")
            shoot(url, args.question, args.out)
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()


def shoot(url: str, question: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('predicted').textContent !== '–'", timeout=30000)
            page.fill("#prompt", question)
            page.click("#send")
            page.wait_for_selector("#send:not([disabled])", timeout=180000)
            page.wait_for_function("[...document.querySelectorAll('#dies tbody tr td:nth-child(4)')]"
                                   ".every((td) => td.textContent.endsWith('%'))", timeout=15000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            shown = page.evaluate("""() => ({
                measured: document.getElementById('measured').textContent,
                predicted: document.getElementById('predicted').textContent,
                dies: [...document.querySelectorAll('#dies tbody tr')].map((tr) => tr.innerText.replace(/\\t/g, ' | ')),
                links: [...document.querySelectorAll('#topology text.flow')].map((t) => t.textContent),
                answer: document.querySelector('.msg.assistant').textContent})""")
        finally:
            browser.close()
    print(f"wrote {out}: what it shows")
    print(f"  answer: {shown['answer']}")
    print(f"  {shown['measured']} tokens/s measured (last 5 s), {shown['predicted']} predicted")
    for row in shown["dies"]:
        print(f"  {row}")
    print(f"  links (host->die0, then die to die, last die->host): {', '.join(shown['links'])}")


if __name__ == "__main__":
    main()
