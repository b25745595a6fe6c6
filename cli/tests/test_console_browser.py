"""``symbi console`` in a real browser (Debian's chromium through chromedriver, driven by Selenium) against a
real ``symbi up`` runtime: log in, run the main job and watch its task finish live, open the agent's timeline
and an inclusion proof, run a what-if, verify an export (and a tampered one), download a report, tail events,
chart the load; an auditor sees no state-changing button and is refused one server-side too; a revoked token
ends its session. Screenshots of each page go to ``<tmp_path>/screenshots``."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from symbi_cli.console.services import service_urls
from symbi_cli.runtime import LocalRuntime
from symbi_cli.runtime_options import RuntimeOptions
from symbi_common.operator_tokens import (
    OperatorClaims,
    bearer_header,
    default_operator_dir,
    issue_local_token,
    issue_token,
    load_issuer_key,
)
from symbi_fixtures.runtimes import take_free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [pytest.mark.timeout(420)]

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 90  # a loaded 2-core machine: the task may wait for its container


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The browser on the console, saving a screenshot of each page it is asked to."""

    def __init__(self, driver: WebDriver, url: str, shots: Path) -> None:
        self.d, self.url, self.shots = driver, url, shots
        shots.mkdir(exist_ok=True)

    def open(self, path: str) -> None:
        self.d.get(self.url + path)

    def shot(self, name: str) -> None:
        self.d.save_screenshot(str(self.shots / f"{len(list(self.shots.iterdir())):02d}-{name}.png"))

    def wait(self, what: str, condition: object, timeout: float = WAIT_S) -> object:
        # An element found a moment before the page re-rendered it (a live update) is stale: look again.
        wait = WebDriverWait(self.d, timeout, poll_frequency=0.3, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(condition, message=what)  # type: ignore[arg-type]

    def text(self, element_id: str) -> str:
        return str(self.d.find_element(By.ID, element_id).text)

    def login(self, token: str) -> None:
        self.d.delete_all_cookies()
        self.open("/login")
        self.d.find_element(By.ID, "token").send_keys(token)
        self.d.find_element(By.ID, "login").click()
        self.wait("logged in", lambda d: d.find_elements(By.ID, "whoami"))


class ConsoleProcess:
    """``symbi console`` as a child process on a fixed port, which the test can restart."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None, log: Path, url: str) -> None:
        self.argv, self.env, self.log, self.url = argv, env, log, url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/login", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"the console exited; see {self.log}"
            time.sleep(0.2)
        raise AssertionError(f"the console did not answer within 60 s; see {self.log}")

    def stop(self) -> float:
        """Stop the console (SIGTERM, as Ctrl-C would); how many seconds it took to exit (killed after 8 s)."""
        if self.proc is None:
            return 0.0
        started = time.monotonic()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        return time.monotonic() - started

    def restart(self) -> float:
        """Stop and start the console again; how long the stop took."""
        stopped_in = self.stop()
        self.start()
        return stopped_in


def tamper(export: Path) -> Path:
    """A copy of ``export`` with one byte of its first event's sealed data changed."""
    lines = export.read_text().splitlines()
    entry = json.loads(lines[0])
    data = entry["data"]
    entry["data"] = data[:40] + ("A" if data[40] != "A" else "B") + data[41:]
    lines[0] = json.dumps(entry)
    out = export.with_name("tampered.jsonl")
    out.write_text("\n".join(lines) + "\n")
    return out


def _drive(
    console: Console,
    downloads: Path,
    admin: str,
    auditor: str,
    exported: Callable[[Path], Path],
    revocable: tuple[str, OperatorClaims],
    revoke: Callable[[str], None],
    restart: Callable[[], float],
    remember: Callable[[str, str], None],
) -> dict[str, float]:
    c, d, times = console, console.d, {}
    t0 = time.monotonic()
    c.login(admin)
    assert c.text("role") == "admin"

    # The live tail in one tab, the main job in another.
    c.open("/events")
    c.wait("the tail connects", lambda d: d.find_element(By.ID, "tail-state").text == "live")
    tail_tab = d.current_window_handle
    d.switch_to.new_window("tab")
    c.open("/run")
    # A workload that says something, waits, then says more: the first line must reach the page while it runs.
    d.execute_script(
        "arguments[0].value = arguments[0].value.replace('echo hello $name', 'echo hello $name; sleep 6; echo bye $name')",
        d.find_element(By.ID, "definition"),
    )
    d.find_element(By.ID, "input").clear()
    d.find_element(By.ID, "input").send_keys("browser")
    d.find_element(By.ID, "run").click()
    c.wait("the task page", lambda d: "/tasks/" in d.current_url)
    task_id = d.current_url.rsplit("/", 1)[1]
    d.execute_script("window.sameDocument = true")
    assert not d.find_elements(By.CSS_SELECTOR, "[hx-trigger]")  # nothing polls: the page is fed by its stream
    c.shot("task-live")
    # The output is streamed (Server-Sent Events): the first line arrives while the task still runs.
    status_at_first_line = c.wait(
        "the first line streamed",
        lambda d: "hello browser" in d.find_element(By.ID, "stdout").text and c.text("task-status"),
    )
    assert status_at_first_line not in ("completed", "cancelled"), status_at_first_line
    assert "bye browser" not in c.text("stdout")
    c.shot("task-streaming")
    c.wait("the task finishes live", lambda d: d.find_element(By.ID, "task-status").text == "completed")
    assert c.text("task-outcome") == "succeeded"
    c.wait("its last line", lambda d: "bye browser" in d.find_element(By.ID, "stdout").text)
    assert d.execute_script("return window.sameDocument === true")  # no reload: the stream changed the page
    assert int(d.find_element(By.ID, "task-live").get_attribute("data-streamed") or 0) >= 3
    c.wait(
        "the charts drawn",
        lambda d: d.execute_script("return document.querySelectorAll('canvas.chart[data-drawn]').length") == 3,
    )
    times["run_to_finish_s"] = time.monotonic() - t0
    c.shot("task-finished")

    d.switch_to.window(tail_tab)
    c.wait(
        "the task's events in the live tail",
        lambda d: any(f"evt.task.{task_id}" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#tail .tail-row")),
    )
    c.shot("events-tail")
    d.switch_to.new_window("tab")

    # The queues: the task among the finished ones; the agent in the list with its tier, host and risk.
    c.open("/tasks")
    assert task_id in c.text("tasks-finished")  # from the scheduler's GET /v1/tasks?state=finished
    assert c.text("count-finished").startswith("1 of 1")
    assert c.text("count-queued") == "0 of 0"
    c.shot("tasks")

    # Restarting the console logs nobody out: the session is sealed on disk under the console's key. The live
    # tail is still open in the first tab: the console ends its stream when told to stop, rather than waiting
    # out uvicorn's graceful-shutdown timeout (3 s) for a stream that never ends by itself.
    stopped_in = restart()
    assert stopped_in < 2.0, f"the console took {stopped_in:.1f} s to stop with a live tail open"
    c.open("/agents")
    assert "/login" not in d.current_url
    assert c.text("role") == "admin"
    times["restart_s"] = time.monotonic() - t0
    c.open("/agents")
    row = next(r for r in d.find_elements(By.CSS_SELECTOR, "#agents tr") if "hello-agent" in r.text)
    assert "tier1" in row.text
    assert "network_access=0" in row.text
    c.shot("agents")

    # The agent's timeline: every event in the audit log with the audit service's verdict.
    c.open(f"/tasks/{task_id}")
    agent_id = d.find_element(By.ID, "task-agent").text
    remember(agent_id, "prefers short greetings")  # a memory of its own, stored through the context API
    d.find_element(By.ID, "task-agent").click()
    c.wait("the timeline", lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .tl-event"))
    c.wait(
        "every lifecycle event audited",
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#timeline .verified"))
            == len(d.find_elements(By.CSS_SELECTOR, "#timeline .tl-event"))
            or d.refresh()
        ),
    )
    types = [e.text.split(" ·")[0] for e in d.find_elements(By.CSS_SELECTOR, "#timeline .tl-head")]
    assert types[:2] == ["agent.registered", "agent.ready"]
    assert "agent.task_completed" in types
    c.shot("agent-timeline")
    # Its memory (the context service's list, decided there) and its messages (its audit trail's bus actions).
    c.wait(
        "its memory listed",
        lambda d: "prefers short greetings" in d.find_element(By.ID, "memories").text or d.refresh(),
    )
    assert "long_term" in c.text("memories")
    assert d.find_elements(By.CSS_SELECTOR, "#messages tr")  # this agent used no bus: "none you may see"
    d.execute_script("document.getElementById('agent-memory').scrollIntoView()")
    c.shot("agent-memory-messages")

    # An inclusion proof, folded by the console up to the root of a checkpoint it verified itself.
    links = d.find_elements(By.CSS_SELECTOR, "#timeline a.proof-link")
    links[0].click()
    c.wait("a checkpoint covering the event", lambda d: d.find_elements(By.ID, "proof-verdict") or d.refresh())
    assert c.text("proof-verdict").startswith("✔"), c.text("proof-verdict")
    assert d.find_elements(By.CSS_SELECTOR, "#proof-path .sibling")
    c.shot("inclusion-proof")

    # What-if: the baseline set plus a blanket forbid turns recorded allows into denials (nothing activated).
    c.open("/policy/baseline")
    box = d.find_element(By.ID, "whatif-cedar")
    d.execute_script("arguments[0].value += '\\nforbid(principal, action, resource);\\n'", box)
    d.find_element(By.ID, "whatif").click()
    c.wait("the what-if diff", lambda d: d.find_elements(By.ID, "whatif-report"))
    assert int(c.text("whatif-changed")) > 0
    assert d.find_elements(By.CSS_SELECTOR, "table.diff.now_deny tr td")
    d.execute_script("document.getElementById('whatif-report').scrollIntoView()")
    c.shot("what-if")

    # A compliance report, downloaded through the browser.
    c.open("/audit")
    assert c.text("checkpoint-verified").startswith("✔")
    c.shot("audit")
    # Verify an export: as `symbi audit export` wrote it, then with one event's bytes altered.
    export = exported(downloads.parent)
    verdict_js = "return (document.getElementById('verify-verdict') || {}).textContent || ''"
    for log, verdict in ((export, "✔"), (tamper(export), "✘")):
        d.execute_script("document.getElementById('verify-result').innerHTML = ''")
        d.find_element(By.ID, "export-file").send_keys(str(log))
        d.find_element(By.ID, "export-checkpoint").send_keys(str(export.with_suffix(".checkpoint")))
        d.find_element(By.ID, "verify").click()
        c.wait("the verdict", lambda d, v=verdict: d.execute_script(verdict_js).strip().startswith(v))
        d.find_element(By.ID, "export-file").clear()
        d.find_element(By.ID, "export-checkpoint").clear()
    assert "bad_signature" in c.text("verify-findings")
    d.execute_script("document.getElementById('verify-result').scrollIntoView()")
    c.shot("verify-export")
    d.find_element(By.ID, "report-sox-csv").click()
    c.wait("the report downloaded", lambda d: [p for p in downloads.glob("symbi-sox-report*.csv") if p.stat().st_size])
    # Hosts and load: the host's capacity, and the load chart sampling the scheduler's status.
    c.open("/hosts")
    assert d.find_elements(By.CSS_SELECTOR, "#hosts td")
    c.wait(
        "the load chart has samples",
        lambda d: d.execute_script("return Chart.getChart('load-chart').data.labels.length") >= 2,
    )
    c.shot("hosts")
    times["admin_flow_s"] = time.monotonic() - t0

    # The auditor: no state-changing button anywhere, and the server refuses such a post anyway.
    c.login(auditor)
    assert c.text("role") == "auditor"
    assert not d.find_elements(By.ID, "nav-run")
    c.open(f"/tasks/{task_id}")
    assert not d.find_elements(By.ID, "cancel")
    c.shot("auditor-task")
    status = d.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const body = new URLSearchParams({definition: 'agent x() {}', input: 'x', csrf: 'x'});
        fetch('/run', {method: 'POST', body}).then(r => done(r.status));"""
    )
    assert status == 403
    c.open("/audit")
    assert c.text("checkpoint-verified").startswith("✔")
    assert d.find_elements(By.ID, "verify")  # verifying an upload reads, it changes nothing
    c.open("/run")
    assert d.find_elements(By.ID, "error")
    assert "read-only" in c.text("error")
    c.shot("auditor-refused")

    # A revoked token ends the session at its next call: the services refuse it (401), the console logs out.
    token, claims = revocable
    c.login(token)
    assert c.text("role") == "operator"
    revoke(claims.tid)
    c.wait("the session ends", lambda d: (d.get(c.url + "/agents") or True) and "/login" in d.current_url)
    c.shot("revoked")
    return times


async def test_console_in_a_real_browser(
    runtime_options: RuntimeOptions, runtime_home: Path, symbi_exe: str, browser: WebDriver, tmp_path: Path
) -> None:
    rt = LocalRuntime(runtime_options)
    port = take_free_port()
    started = time.monotonic()
    console: ConsoleProcess | None = None
    try:
        await rt.start()
        await rt.wait_ready(timeout=90)
        url = f"http://127.0.0.1:{port}"
        argv = [symbi_exe, "console", "--home", str(runtime_home), "--port", str(port)]
        console = ConsoleProcess(argv, runtime_options.env, tmp_path / "console.log", url)
        await asyncio.to_thread(console.start)
        admin = (runtime_home / "operator.token").read_text().strip()

        def export(where: Path) -> Path:
            out = where / "export.jsonl"
            subprocess.run(
                [symbi_exe, "audit", "export", "-o", str(out), "--home", str(runtime_home)],
                env=runtime_options.env, check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            return out

        auditor = issue_local_token(runtime_home / "keys", name="ada", role="auditor")
        revocable = issue_token(
            load_issuer_key(default_operator_dir(runtime_home / "keys")), name="otto", role="operator", ttl_s=3600
        )

        def revoke(token_id: str) -> None:
            subprocess.run(
                [symbi_exe, "token", "revoke", token_id, "--home", str(runtime_home)],
                env=runtime_options.env, check=True, capture_output=True, timeout=60,
            )  # fmt: skip

        context_url = service_urls(runtime_home, None)["context"]

        def remember(agent_id: str, text: str) -> None:
            body = {"agent_id": agent_id, "memories": [{"kind": "long_term", "text": text}]}
            r = httpx.post(context_url + "/v1/memories", json=body, headers=bearer_header(admin), timeout=60)
            assert r.status_code == 201, r.text

        shots = tmp_path / "screenshots"
        print(f"console screenshots: {shots}")
        driven = Console(browser, url, shots)
        try:
            times = await asyncio.to_thread(
                _drive,
                driven,
                tmp_path / "downloads",
                admin,
                auditor,
                export,
                revocable,
                revoke,
                console.restart,
                remember,
            )
        except Exception:
            driven.shot("failure")
            raise

        reports = list((tmp_path / "downloads").glob("symbi-sox-report*.csv"))
        assert reports, f"no report downloaded to {tmp_path / 'downloads'}"
        assert reports[0].read_text().strip()
        assert len(list(shots.glob("*.png"))) >= 15
        times["total_s"] = time.monotonic() - started
        print("console browser test timings:", json.dumps({k: round(v, 1) for k, v in times.items()}))
    finally:
        if console is not None:
            await asyncio.to_thread(console.stop)
        await rt.stop()
