"""The chat page at ``/`` in a real headless browser (Debian's chromium driven by Playwright),
plus CORS / HEAD / 405 checks against the same ``kaon serve`` process.

One server (``--api-key``, one allowed origin) and one browser serve the whole module. Without
/usr/bin/chromium the browser tests skip, unless the environment variable CI is set: then they
fail (.ci/run installs chromium). Screenshots go to $KAON_TEST_ARTIFACTS, else pytest's tmp dir.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.entrypoints.utils import API_KEY, ServerProcess, start_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
XSS = "<img src=x onerror=alert(1)>"
RUNNING = "kaon:num_requests_running"
# The page on another origin: fetches kaon's API with a JSON body and a Bearer key, which
# makes the browser send a CORS preflight first.
CROSS_ORIGIN_PAGE = "<!doctype html><title>other origin</title><p>another web site</p>"
CROSS_ORIGIN_FETCH = """async ([url, key]) => {
    try {
        const response = await fetch(url + "/v1/chat/completions", {
            method: "POST",
            headers: {"Content-Type": "application/json", "Authorization": "Bearer " + key},
            body: JSON.stringify({messages: [{role: "user", content: "Hi"}], max_tokens: 3,
                                  temperature: 0}),
        });
        const body = await response.json();
        return {status: response.status, content: body.choices[0].message.content};
    } catch (error) {
        return {error: String(error)};
    }
}"""


def _require_browser() -> None:
    """Skip without chromium or Playwright, except in CI (env CI set), where that is a failure."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[test]')"
    else:
        missing = None if CHROMIUM.exists() else f"{CHROMIUM} is missing (apt-get install chromium)"
    if missing and os.environ.get("CI"):
        pytest.fail(f"browser tests need chromium in CI: {missing}")
    if missing:
        pytest.skip(f"no browser: {missing}")


@pytest.fixture(scope="module")
def origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two tiny static sites on other ports: one allowed by --allowed-origins, one not."""
    root = tmp_path_factory.mktemp("origin")
    (root / "index.html").write_text(CROSS_ORIGIN_PAGE)
    handler = functools.partial(_QuietHandler, directory=str(root))
    servers = {name: http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for name in
               ("allowed", "refused")}  # fmt: skip
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {name: f"http://127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture(scope="module")
def web_server(
    tmp_path_factory: pytest.TempPathFactory, origins: dict[str, str]
) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("web_server") / "kaon-serve.log"
    flags = ["--max-num-seqs", "4", "--no-access-log", "--allowed-origins", origins["allowed"]]
    server = start_server(log_path, flags, API_KEY)
    yield server
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("KAON_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser, web_server: ServerProcess):
    """The chat page, with a record of every dialog (alert) it opens."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    chat = context.new_page()
    chat.dialogs = []
    chat.on("dialog", lambda dialog: (chat.dialogs.append(dialog.message), dialog.dismiss()))
    chat.goto(web_server.url + "/")
    chat.wait_for_selector("#server-status.bad")  # no key yet: /v1/models answers 401
    yield chat
    context.close()


def _settings(page, **values: str) -> None:
    for field, value in values.items():
        page.fill(f"#{field.replace('_', '-')}", value)


def _send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _wait_idle(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_selector("#send:not([disabled])", timeout=timeout_ms)


def _wait_for(page, expression: str, timeout: float = 60.0) -> None:
    """Poll a JS expression until it is truthy (page.wait_for_function compiles its predicate
    with eval, which the page's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def _stored_messages(page) -> list[dict]:
    saved = json.loads(page.evaluate("localStorage.getItem('kaon.conversations.v1')"))
    current = next(c for c in saved["conversations"] if c["id"] == saved["currentId"])
    return current["messages"]


def test_wrong_or_missing_key_shows_an_error(page) -> None:
    _send(page, "Hello")
    error = page.wait_for_selector("#error:not([hidden])", timeout=20_000)
    assert "HTTP 401" in error.text_content() and "API key" in error.text_content()
    _settings(page, api_key="not-the-key")
    _send(page, "Hello again")
    _wait_for(page, "document.querySelectorAll('.message-error').length === 2")
    assert "HTTP 401" in page.text_content("#error")
    _wait_idle(page)


def test_streams_the_greedy_answer(page, web_server: ServerProcess, artifact_dir: Path) -> None:
    page.click("#new-chat")
    _settings(page, api_key=API_KEY, temperature="0", top_p="1", max_tokens="32")
    # Record the assistant text's length at every DOM change while it streams.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const replies = document.querySelectorAll('.message.assistant .content');
            if (replies.length) window.lengths.push(replies[replies.length - 1].textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true});
    }""")
    prompt = "What is the capital of France? Answer in two sentences."
    _send(page, prompt)
    _wait_idle(page)
    reply = _stored_messages(page)[-1]
    expected = httpx.post(
        f"{web_server.url}/v1/chat/completions", headers=web_server.headers, timeout=120,
        json={"messages": [{"role": "user", "content": prompt}], "temperature": 0, "top_p": 1,
              "max_tokens": 32},
    ).json()  # fmt: skip
    assert reply["content"] == expected["choices"][0]["message"]["content"]
    assert reply["stats"]["numTokens"] == expected["usage"]["completion_tokens"]
    rendered = page.locator(".message.assistant .content").last.text_content()
    assert " ".join(rendered.split()) == " ".join(reply["content"].split())
    lengths = page.evaluate("window.lengths")
    partial = sorted({n for n in lengths if 0 < n < len(rendered)})
    assert len(partial) >= 3, f"the answer did not stream: lengths seen {lengths}"
    stats = page.locator(".message.assistant .stats").last.text_content()
    assert (
        "TTFT" in stats and "tokens/s" in stats and f"{reply['stats']['numTokens']} tokens" in stats
    )
    assert page.text_content("#server-status") == "connected"
    screenshot = artifact_dir / "kaon-chat.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")


def test_stop_aborts_the_request(page, web_server: ServerProcess) -> None:
    _settings(page, max_tokens="1500")
    aborted = 'kaon:request_success_total{finished_reason="abort"}'
    num_aborted = web_server.metrics().get(aborted, 0.0)
    _send(page, "Write a very long story about a dragon who learns to cook.")
    _wait_for(page, "document.querySelector('.message.pending .content')?.textContent.length > 20")
    assert web_server.metrics()[RUNNING] == 1
    page.click("#stop")
    _wait_idle(page, 10_000)
    assert web_server.wait_for_metric(RUNNING, 0) == 0
    assert web_server.wait_for_metric(aborted, num_aborted + 1) == num_aborted + 1
    reply = _stored_messages(page)[-1]
    assert reply["stopped"] and len(reply["content"]) > 20 and reply["stats"]["numTokens"] < 1500
    assert page.locator(".message.assistant").last.get_attribute("class").endswith("stopped")


def test_reload_restores_the_conversation(page) -> None:
    before = _stored_messages(page)
    page.reload()
    page.wait_for_selector("#server-status.ok")  # the key was kept too
    texts = page.locator("#messages .message .content").all_text_contents()
    assert len(texts) == len(before) == 4
    assert texts[0] == "What is the capital of France? Answer in two sentences."
    assert texts[2] == "Write a very long story about a dragon who learns to cook."
    assert page.input_value("#temperature") == "0"


def test_markup_in_messages_shows_as_text(page, artifact_dir: Path) -> None:
    """Model output and user text go through the same renderer: tags are text, links are
    http(s) only, code blocks stay code."""
    _settings(page, max_tokens="1")
    page.click("#new-chat")
    _send(page, f"Repeat {XSS}")
    _wait_idle(page)
    # An assistant message as the model could have written it, stored as the page stores one.
    reply = (
        f"Here: {XSS} and **bold {XSS}**\n\n```html\n<script>alert(2)</script>\n```\n"
        "[click](javascript:alert(3)) [docs](https://example.com/a) <b>not bold</b>"
    )
    page.evaluate(
        """(reply) => {
            const saved = JSON.parse(localStorage.getItem('kaon.conversations.v1'));
            const conversation = saved.conversations.find((c) => c.id === saved.currentId);
            conversation.messages.push({role: 'assistant', content: reply});
            localStorage.setItem('kaon.conversations.v1', JSON.stringify(saved));
        }""",
        reply,
    )
    page.reload()
    messages = page.locator("#messages")
    messages.locator(".message").nth(2).wait_for()
    assert page.locator("#messages img, #messages script, #messages b").count() == 0
    user_text, _, assistant_text = messages.locator(".content").all_text_contents()
    assert user_text == f"Repeat {XSS}"
    assert f"Here: {XSS} and bold {XSS}" in assistant_text
    assert "<b>not bold</b>" in assistant_text
    assert messages.locator("pre code").last.text_content() == "<script>alert(2)</script>"
    assert messages.locator("strong").last.text_content() == f"bold {XSS}"
    links = messages.locator("a")
    assert links.count() == 1 and links.get_attribute("href") == "https://example.com/a"
    assert "[click](javascript:alert(3))" in assistant_text
    time.sleep(0.2)  # a dialog, if any, would have opened by now
    assert page.dialogs == []
    page.screenshot(path=str(artifact_dir / "kaon-chat-markup.png"))


RENDER = """async (source) => {
    const { renderMarkdown } = await import('/static/markdown.js');
    const box = document.createElement('div');
    box.append(renderMarkdown(source));
    return box.innerHTML;
}"""


@pytest.mark.parametrize(
    ("source", "html"),
    [
        ("# Title\nsome `a<b>` *it* **bo**", "<h3>Title</h3><p>some <code>a&lt;b&gt;</code> "
         "<em>it</em> <strong>bo</strong></p>"),
        ("- one\n- two\n  more\n\n3. three", "<ul><li>one</li><li>two<br>more</li></ul>"
         '<ol start="3"><li>three</li></ol>'),
        ("```py\nx = '<i>'", '<pre data-language="py"><code class="language-py">'
         "x = '&lt;i&gt;'</code></pre>"),  # an unclosed fence while streaming
        ("> quote\n\na\nb", "<blockquote><p>quote</p></blockquote><p>a<br>b</p>"),
        ("see https://x.org/a_b. [t](data:text/html,x) ![i](https://x.org/i.png)",
         '<p>see <a href="https://x.org/a_b" target="_blank" rel="noopener noreferrer nofollow">'
         "https://x.org/a_b</a>. [t](data:text/html,x) !<a "
         'href="https://x.org/i.png" target="_blank" rel="noopener noreferrer nofollow">i</a></p>'),
        ('<a href="javascript:x">y</a><svg onload=alert(1)>',
         "<p>&lt;a href=\"javascript:x\"&gt;y&lt;/a&gt;&lt;svg onload=alert(1)&gt;</p>"),
    ],
)  # fmt: skip
def test_markdown_renderer(page, source: str, html: str) -> None:
    """The page's renderer, run in the browser: the HTML it builds for Markdown and markup."""
    assert page.evaluate(RENDER, source) == html


def test_server_unreachable_is_reported(page) -> None:
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionrefused"))
    try:
        _send(page, "Are you there?")
        error = page.wait_for_selector("#error:not([hidden])", timeout=20_000)
        assert "Cannot reach the kaon server" in error.text_content()
    finally:
        page.unroute("**/v1/chat/completions")
    _wait_idle(page)


def test_cross_origin_fetch_follows_allowed_origins(
    browser, web_server: ServerProcess, origins: dict[str, str]
) -> None:
    context = browser.new_context()
    try:
        results = {}
        for name, origin in origins.items():
            other = context.new_page()
            other.goto(origin + "/")
            results[name] = other.evaluate(CROSS_ORIGIN_FETCH, [web_server.url, API_KEY])
        assert results["allowed"]["status"] == 200 and results["allowed"]["content"]
        assert results["refused"] == {"error": "TypeError: Failed to fetch"}
    finally:
        context.close()


def test_cors_head_and_allow_over_http(web_server: ServerProcess, origins: dict[str, str]) -> None:
    """No browser: the same server's preflight answers, HEAD and 405 Allow; the page's
    address in the start-up log."""
    url = web_server.url
    assert f"chat page at {url}/ (OpenAI API at {url}/v1)" in web_server.log_path.read_text()
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    allowed = httpx.options(
        f"{url}/v1/chat/completions", headers={**preflight, "Origin": origins["allowed"]}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == origins["allowed"]
    assert "POST" in allowed.headers["access-control-allow-methods"]
    refused = httpx.options(
        f"{url}/v1/chat/completions", headers={**preflight, "Origin": origins["refused"]}
    )
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    health = httpx.head(f"{url}/health")
    assert health.status_code == 200 and health.content == b""
    page = httpx.head(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert httpx.head(f"{url}/v1/models", headers=web_server.headers).status_code == 200
    not_allowed = httpx.get(f"{url}/v1/chat/completions", headers=web_server.headers)
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
    assert not_allowed.json()["error"]["code"] == "method_not_allowed"
