"""The web page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Skipped with the reason when Playwright or the ``chromium`` binary is absent (Playwright's own browser
download is not used). Screenshots are saved in the test's tmp folder (``search.png``, ``page.png``).
"""

import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (a test dependency) is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server(index_dir, plain_reader_dir):
    import uvicorn

    from reprlab.serve import ServeConfig, Service, create_app

    service_config = ServeConfig(index=str(index_dir), multihop_index=str(index_dir), reader=str(plain_reader_dir))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(Service.from_config(service_config)), host="127.0.0.1", port=port,
                            log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_search_and_answer_in_a_browser(server, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            offline = []
            page.on("request", lambda r: offline.append(r.url) if not r.url.startswith(server) else None)
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('about').textContent.includes('documents')")
            page.fill("#q", "virus in the lung")
            page.click("#go")
            page.wait_for_selector(".hit")
            assert page.locator(".hit").count() == 10
            assert page.locator(".hit mark").count() > 0  # the query's terms are highlighted
            assert "server" in page.locator("#status").inner_text() and "ms" in page.locator("#status").inner_text()
            page.screenshot(path=str(tmp_path / "search.png"))

            page.select_option("#task", "multihop")
            page.click("#go")
            page.wait_for_selector(".chain .hops")
            assert page.locator(".chain").first.locator(".hop").count() == 2

            page.select_option("#task", "answer")
            page.fill("#q", "What does the heart pump?")
            page.fill("#passages", "The heart pumps blood through the body.\nProteins fold inside the cell.")
            page.click("#go")
            page.wait_for_selector("mark.answer-span")
            span = page.locator("mark.answer-span").first.inner_text()
            assert span and span in "The heart pumps blood through the body. Proteins fold inside the cell."
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert offline == []  # nothing but the service itself was fetched: it works offline
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 1000 and (tmp_path / "search.png").stat().st_size > 1000
