"""`chipfuse serve` as a user meets it: a real server process on loopback with four emulated dies, driven by the
official `openai` client and by raw HTTP. Every wait is bounded (a bound against hanging, not a speed goal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from chipfuse.runtime.executor import free_port

KEY = "test-key-123"


def _wait(cond, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chipfuse.cli.main", "serve", "--port", str(port), "--slots", "2",
                             "--max-queue", "1", "--context", "512", "--max-tokens", "400", "--api-key", KEY],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # ended: the assertion below says so

    _wait(up, 120, "the server answers /health")
    assert proc.poll() is None, proc.stdout.read()
    yield {"url": url, "proc": proc}
    if proc.poll() is None:
        proc.kill()


def _h(**kw):
    return {"Authorization": f"Bearer {KEY}", **kw}


def test_the_openai_client_streams_a_chat_completion(server):
    from openai import OpenAI

    client = OpenAI(base_url=server["url"] + "/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct.Q4_1"]
    stream = client.chat.completions.create(model="smollm2", stream=True, temperature=0, max_tokens=24,
                                            messages=[{"role": "user", "content": "What is the capital of France?"}])
    pieces, reasons = [], []
    for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert "Paris" in "".join(pieces) and reasons[-1] == "stop" and len(pieces) > 3
    done = client.completions.create(model="smollm2", prompt="One, two, three,", max_tokens=12, temperature=0,
                                     stop=[" five"])
    assert " five" not in done.choices[0].text and done.usage.prompt_tokens > 0


def test_a_wrong_key_is_refused(server):
    r = httpx.post(server["url"] + "/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer no"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


BAD = [
    ("POST", "/v1/chat/completions", b"{bad json"),
    ("POST", "/v1/chat/completions", b"[]"),
    ("POST", "/v1/chat/completions", b"null"),
    ("POST", "/v1/chat/completions", b"42"),
    ("POST", "/v1/chat/completions", b'"text"'),
    ("POST", "/v1/chat/completions", b"{}"),
    ("POST", "/v1/chat/completions", b'{"messages": []}'),
    ("POST", "/v1/chat/completions", b'{"messages": "hi"}'),
    ("POST", "/v1/chat/completions", b'{"messages": [1, 2]}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "x"}]}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"content": "x"}]}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e9}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "top_p": 0}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 3}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": "1"}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "seed": "7"}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "seed": 1.5}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stop": [""]}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stop": 7}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}'),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "f"}]}'),
    ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "word " * 600}]}).encode()),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
    ("POST", "/v1/chat/completions", b"\xff\xfe\x00 not utf-8"),
    ("POST", "/v1/chat/completions", b"{" * 5000),
    ("POST", "/v1/completions", b'{"prompt": ""}'),
    ("POST", "/v1/completions", b'{"prompt": ["a", "b"]}'),
    ("POST", "/v1/completions", b'{"prompt": null}'),
    ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 600}'),
    ("POST", "/v1/completions", b"x" * (2 << 20)),
    ("GET", "/v1/chat/completions", b""),
    ("DELETE", "/v1/models", b""),
    ("GET", "/v1/nothing-here", b""),
    ("POST", "/health", b"{}"),
]


def test_malformed_requests_get_a_4xx_that_says_why_and_the_server_stays_up(server):
    assert len(BAD) >= 40
    with httpx.Client(base_url=server["url"], timeout=30) as c:
        for method, path, body in BAD:
            r = c.request(method, path, content=body, headers=_h(**{"content-type": "application/json"}))
            assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text[:200])
            err = r.json()["error"]
            assert err["message"] and "Traceback" not in err["message"], (body[:80], err)
        assert c.get("/health").status_code == 200
    metrics = httpx.get(server["url"] + "/metrics").text
    assert 'status="500"' not in metrics


def _long_stream(c: httpx.Client):
    return c.stream("POST", "/v1/completions", headers=_h(),
                    json={"prompt": "Write a very long story about the sea.", "max_tokens": 380, "stream": True,
                          "temperature": 0.8, "seed": 3})


def test_a_client_that_disconnects_frees_its_slot_and_a_full_queue_says_429(server):
    url = server["url"]
    busy = lambda: httpx.get(url + "/health").json()["slots_busy"]  # noqa: E731
    with httpx.Client(base_url=url, timeout=60) as c:
        streams = [_long_stream(c) for _ in range(3)]  # 2 slots + 1 queued: the server is full
        responses = [s.__enter__() for s in streams]
        lines = [r.iter_lines() for r in responses]
        for it in lines[:2]:
            assert next(it).startswith("data: ")
        _wait(lambda: httpx.get(url + "/health").json()["in_system"] == 3, 20, "three requests admitted")
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=_h())
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "--max-queue 1" in r.json()["error"]["message"]
        for s in streams:
            s.__exit__(None, None, None)  # the clients leave mid-answer
    _wait(lambda: busy() == 0, 20, "every slot freed after the clients left")
    assert httpx.get(url + "/health").json()["in_system"] == 0


def test_the_page_chats_and_its_device_view_follows_in_a_real_browser(server, tmp_path):
    """Headless Chromium (Debian's) via Playwright: the page loads the device view, sends a message with the
    API key typed in, shows the streamed answer, and the measured tokens/s, the dies' busy shares and their links'
    traffic follow."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(server["url"] + "/")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.getElementById('predicted').textContent !== '–'", timeout=20000)
            assert page.locator("#dies tbody tr").count() == 4
            page.fill("#prompt", "What is the capital of France?")
            page.click("#send")
            page.wait_for_function("(document.querySelector('.msg.assistant') || {textContent: ''})"
                                   ".textContent.includes('Paris')", timeout=60000)
            page.wait_for_function("parseFloat(document.getElementById('measured').textContent) > 0", timeout=10000)
            # each die's own count of its busy time reaches the page within a few seconds
            page.wait_for_function("[...document.querySelectorAll('#dies tbody tr td:nth-child(4)')]"
                                   ".some((td) => td.textContent.endsWith('%'))", timeout=15000)
            # and so does each die's own count of the bytes it sent on: the links from the dies carry it
            def die_links():
                view = httpx.get(server["url"] + "/v1/device", headers=_h()).json()
                return [lk for lk in view["links"] if lk["source"] == "die"]

            assert {lk["from"] for lk in die_links()} == {"die0", "die1", "die2", "die3"}
            _wait(lambda: any(lk["bytes_per_s"] > 0 for lk in die_links()), 4, "a die's sent bytes on the page")
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10000
            assert not page.locator(".msg.error").count()
        finally:
            browser.close()


def test_a_killed_die_fails_its_request_clearly_and_the_server_recovers(server):
    url = server["url"]
    pid = httpx.get(url + "/health").json()["dies"][1]["pid"]
    with httpx.Client(base_url=url, timeout=60) as c, _long_stream(c) as r:
        it = r.iter_lines()
        next(it)
        os.kill(pid, signal.SIGKILL)
        rest = "\n".join(line for line in it)  # ends: never hangs (the client's timeout is the bound)
    assert "generation failed" in rest and "die1" in rest and "[DONE]" in rest
    _wait(lambda: httpx.get(url + "/health").status_code == 503, 10, "health says recovering")
    _wait(lambda: httpx.get(url + "/health").status_code == 200, 90, "health back to 200 after the restart")
    assert httpx.get(url + "/health").json()["dies"][1]["pid"] != pid
    r = httpx.post(url + "/v1/completions", json={"prompt": "The sea is", "max_tokens": 4}, headers=_h(), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    metrics = httpx.get(url + "/metrics").text
    assert "chipfuse_worker_restarts_total 1.0" in metrics and 'chipfuse_die_busy_seconds{die="die0"}' in metrics


def test_sigterm_lets_a_running_stream_end_then_leaves_no_die_behind(server):
    proc = server["proc"]
    pids = [d["pid"] for d in httpx.get(server["url"] + "/health").json()["dies"]]
    with httpx.Client(base_url=server["url"], timeout=60) as c, c.stream(
            "POST", "/v1/completions", headers=_h(),
            json={"prompt": "The sea is", "max_tokens": 40, "stream": True, "temperature": 0}) as r:
        it = r.iter_lines()
        next(it)
        proc.send_signal(signal.SIGTERM)
        rest = "\n".join(it)
    assert '"finish_reason": "length"' in rest and rest.rstrip().endswith("data: [DONE]")
    assert proc.wait(timeout=60) is not None
    _wait(lambda: not any(os.path.exists(f"/proc/{p}") and "zombie" not in open(f"/proc/{p}/status").read().lower()
                          for p in pids), 20, "every die process gone")


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path):
    """The fuzzer `schemathesis` against the server's own OpenAPI schema, with a fixed seed: no 500, every response
    in a status and shape the schema documents, every request outside the schema refused. (Requests inside the
    schema may still be refused for limits only the running model knows: a prompt longer than the context.)"""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "chipfuse.cli.main", "serve", "--port", str(port), "--slots", "2",
                             "--context", "256", "--max-tokens", "8", "--api-key", KEY], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        _wait(up, 120, "the server answers /health")
        run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
                              "--exclude-checks", "positive_data_acceptance", "--max-examples", "60", "--seed", "7",
                              "--request-timeout", "60", "-H", f"Authorization: Bearer {KEY}", "--workers", "1"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-6000:]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # still up and serving
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
