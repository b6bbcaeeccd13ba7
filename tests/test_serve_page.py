"""The chat page in headless Chromium (Debian's package), driven over the DevTools protocol on a pipe: attach an
image, ask, watch the answer stream in, ask again in the same conversation, save a screenshot."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time

import openai
import pytest

from serve_helpers import data_url, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                         "(apt-get install -y chromium); .ci/run installs it")


class Browser:
    """Headless Chromium with the DevTools protocol on fds 3 (commands in) and 4 (replies out)."""

    def __init__(self, profile: str):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # the child's ends above fd 4, so the shell's redirections onto 3 and 4 cannot clobber them
        low = (to_chrome_r, from_chrome_w)
        to_chrome_r, from_chrome_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in low)
        for fd in low:
            os.close(fd)

        args = ["--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1000,700", "about:blank"]
        # bash (dash takes one-digit fds only) puts the pipe ends on fds 3 and 4, where --remote-debugging-pipe
        # talks, then execs chromium
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}',
                                      CHROMIUM, *args], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer, self.next_id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Run one DevTools command; returns its result (raises on an error reply)."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                block = os.read(self.from_chrome, 1 << 20)
                if not block:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self.buffer += block
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        """A new tab on `url`, this browser's session from now on."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete' && !!document.getElementById('send')")

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout_s: float = 60.0, every_s: float = 0.02, watch: str | None = None):
        """Poll until `expression` is truthy; returns the distinct values of `watch` seen meanwhile."""
        seen, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if watch is not None:
                value = self.eval(watch)
                if not seen or seen[-1] != value:
                    seen.append(value)
            if self.eval(expression):
                return seen
            time.sleep(every_s)
        raise TimeoutError(f"page never reached: {expression}")

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self.to_chrome)
        os.close(self.from_chrome)


@pytest.fixture(scope="module")
def server(tiny_llava_hf_dir):
    # one decode step per call: the answer reaches the page token by token
    with running_server(tiny_llava_hf_dir, "--max_batch", "2", "--max_len", "256", "--decode_steps", "1",
                        "--max_tokens", "24") as (url, service):
        yield url


def answers(page: Browser) -> list[str]:
    return page.eval("[...document.querySelectorAll('.msg.assistant')].map(e => e.textContent)")


def ask(page: Browser, text: str, turn: int) -> tuple[str, int, list[str]]:
    """Type a question, send it; returns (final answer, chunks the page received, answer texts seen meanwhile)."""
    page.eval(f"document.getElementById('question').value = {json.dumps(text)}")
    page.eval("document.getElementById('send').click()")
    done = f"document.querySelectorAll('.msg.assistant[data-done=true]').length === {turn}"
    seen = page.wait(done, watch=f"(document.querySelectorAll('.msg.assistant')[{turn - 1}] || {{}}).textContent")
    last = f"document.querySelectorAll('.msg.assistant')[{turn - 1}]"
    return page.eval(f"{last}.textContent"), int(page.eval(f"{last}.dataset.chunks")), seen


def test_chat_page_streams_answers_about_an_uploaded_image(server, question_set, tmp_path):
    image = question_set["image_root"] / "img" / "0.png"
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)
    first_q, second_q = "What is in the picture?", "Describe the colors."
    messages = [{"role": "user", "content": [{"type": "text", "text": first_q},
                                             {"type": "image_url", "image_url": {"url": data_url(image)}}]}]
    want1 = client.chat.completions.create(model="tiny", messages=messages).choices[0].message.content
    messages += [{"role": "assistant", "content": want1}, {"role": "user", "content": second_q}]
    want2 = client.chat.completions.create(model="tiny", messages=messages).choices[0].message.content

    page = Browser(str(tmp_path / "profile"))
    try:
        page.open(server + "/")
        assert page.eval("document.getElementById('model').textContent") == "tiny"
        root = page.send("DOM.getDocument")["root"]["nodeId"]
        node = page.send("DOM.querySelector", {"nodeId": root, "selector": "#file"})["nodeId"]
        page.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(image)]})
        page.wait("!!document.getElementById('preview').getAttribute('src')")
        text1, chunks1, seen1 = ask(page, first_q, 1)
        # streamed: the page got the answer in several deltas and showed it growing
        assert text1 == want1 and chunks1 > 1
        assert any(s and s != text1 and text1.startswith(s) for s in seen1), seen1
        # the conversation is kept: the second answer is the one for the whole two-turn conversation
        text2, chunks2, _ = ask(page, second_q, 2)
        assert text2 == want2 and chunks2 >= 1
        assert page.eval("document.querySelectorAll('.msg.user img').length") == 1
        shot = base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"})["data"])
        # a pasted image starts a new conversation about it
        png = json.dumps(base64.b64encode(image.read_bytes()).decode())
        page.eval(f"""(() => {{ const bytes = Uint8Array.from(atob({png}), c => c.charCodeAt(0));
            const dt = new DataTransfer(); dt.items.add(new File([bytes], 'p.png', {{type: 'image/png'}}));
            document.dispatchEvent(new ClipboardEvent('paste', {{clipboardData: dt}})); }})()""")
        page.wait("(document.getElementById('preview').getAttribute('src') || '').startsWith('data:image/png')")
        assert page.eval("document.querySelectorAll('.msg').length") == 0
        (tmp_path / "chat_page.png").write_bytes(shot)
        if os.environ.get("SERVE_PAGE_SCREENSHOT"):  # a copy to look at
            shutil.copy(tmp_path / "chat_page.png", os.environ["SERVE_PAGE_SCREENSHOT"])
        assert shot.startswith(b"\x89PNG") and len(shot) > 5000
    finally:
        page.close()
