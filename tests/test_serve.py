"""`addsr serve`: the page in a real browser, and its queue, errors and limits through Gradio's Python client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from addsr import AddSRPipeline
from addsr.sampling import DEFAULT_ADDED_PROMPT

from conftest import build_pipe

try:
    import gradio_client
    from addsr import serve
except ImportError:  # the web extra is optional
    gradio_client = serve = None
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

WEB_EXTRA = "the web extra: pip install -c constraints.txt -e '.[web]'"


def require(present: bool, what: str) -> None:
    """Skip a test when ``what`` is missing here; under CI (CI=true) fail instead, since .ci/run installs it."""
    if not present:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs {what}")


class CountingPipeline(AddSRPipeline):
    """Records how many calls run at once, each held long enough for a second request to overlap it."""

    active = 0
    most_at_once = 0
    lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            type(self).active += 1
            type(self).most_at_once = max(self.most_at_once, self.active)
        try:
            time.sleep(0.5)
            return super().__call__(*args, **kwargs)
        finally:
            with self.lock:
                type(self).active -= 1


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def page(tmp_path):
    require(serve is not None, WEB_EXTRA)
    CountingPipeline.most_at_once = 0
    pipe = build_pipe()  # with the tiny tagger, so prompts carry tags
    pipe.__class__ = CountingPipeline
    config = serve.ServeConfig(port=free_port(), max_upload_mb=0.05, max_pixels=5000)
    with serve.open_page(pipe, config) as demo:
        client = gradio_client.Client(demo.local_url, verbose=False, analytics_enabled=False,
                                      download_files=str(tmp_path / "downloads"))
        yield demo, client


def submit(client, *paths, **options):
    arguments = dict(prompt="", num_steps=1, psr_weight=0.4, color_fix=serve.MODEL_COLOR_FIX, seed=7,
                     random_seed=False, tile=0, output_format="png", wavelet_levels=None, guidance_scale=0.0,
                     added_prompt=DEFAULT_ADDED_PROMPT, tile_overlap=64)
    arguments.update(options)
    files = [gradio_client.handle_file(str(path)) for path in paths]
    return client.submit(files=files, api_name="/upscale", **arguments)


def test_two_visitors_are_served_one_after_the_other(page, tmp_path):
    demo, client = page
    Image.new("RGB", (20, 12), (30, 20, 10)).save(tmp_path / "dark.png")
    Image.new("RGB", (16, 8), (230, 240, 250)).save(tmp_path / "bright.png")
    first = submit(client, tmp_path / "dark.png", prompt="a cave")
    second = submit(client, tmp_path / "bright.png", output_format="webp")
    table, _, prompt, downloads, _ = first.result(timeout=120)
    assert prompt == "dark, night, a cave," + DEFAULT_ADDED_PROMPT
    assert table["data"] == [["dark.png", "80 x 48 png", table["data"][0][2], 7]]
    with Image.open(downloads[0]) as written:
        assert written.size == (80, 48) and written.format == "PNG"
    _, (before, after), prompt, downloads, _ = second.result(timeout=120)
    assert prompt.startswith("bright, sky, ,")
    with Image.open(downloads[0]) as written, Image.open(before) as shown_before, Image.open(after) as shown_after:
        assert written.size == shown_before.size == shown_after.size == (64, 32) and written.format == "WEBP"
    assert CountingPipeline.most_at_once == 1


def test_a_bad_upload_gives_a_readable_error_and_the_page_goes_on(page, tmp_path, monkeypatch):
    demo, client = page
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(gradio_client.exceptions.AppError, match="Nothing was upscaled: notes.png: not an image"):
        submit(client, tmp_path / "notes.png").result(timeout=120)
    Image.new("RGB", (100, 60)).save(tmp_path / "huge.png")  # over the page's limit of 5000 pixels
    with pytest.raises(gradio_client.exceptions.AppError, match="huge.png: .*over the limit"):
        submit(client, tmp_path / "huge.png").result(timeout=120)
    with monkeypatch.context() as memory:
        memory.setattr(AddSRPipeline, "__call__", _out_of_memory)
        Image.new("RGB", (20, 12)).save(tmp_path / "photo.png")
        with pytest.raises(gradio_client.exceptions.AppError, match=r"photo.png: .*memory"):
            submit(client, tmp_path / "photo.png").result(timeout=120)

    too_large = tmp_path / "large.png"
    too_large.write_bytes(b"\0" * 80_000)
    request = urllib.request.Request(f"{demo.local_url}gradio_api/upload", method="POST",
                                     data=_multipart("large.png", too_large.read_bytes()),
                                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413 and "File size exceeded maximum allowed size" in refused.value.read().decode()

    noise = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "before.png")  # named like a comparison image, which must not replace it
    table, (_, after), _, downloads, _ = submit(client, tmp_path / "notes.png", tmp_path / "before.png").result(120)
    (bad_name, bad_result, *_), good_row = table["data"]
    assert bad_name == "notes.png" and "not an image" in bad_result and good_row[:2] == ["before.png", "40 x 24 png"]
    with Image.open(downloads[0]) as written, Image.open(after) as shown:
        assert len(downloads) == 1 and np.array_equal(np.asarray(written), np.asarray(shown))


def test_safe_defaults_and_clear_refusals(tmp_path):
    require(serve is not None, WEB_EXTRA)
    from typer.testing import CliRunner

    from addsr.cli import app

    assert serve.ServeConfig().host == "127.0.0.1" and not serve.ServeConfig().share
    assert [serve.ServeConfig(host=host).is_local for host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "pc.lan")] \
        == [True, True, True, False, False]
    with pytest.raises(ValueError, match="upload limit"):
        serve.ServeConfig(max_upload_mb=0)
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--port", str(free_port())])
    assert result.exit_code == 2 and "has no 'unet/' folder" in result.output


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory")


BOUNDARY = "addsr-test-boundary"


def _multipart(name: str, content: bytes) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n")
    return head.encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()


SCREENSHOT = os.environ.get("ADDSR_SERVE_SCREENSHOT")
"""Set to a path (docs/figures/serve.png) to run the browser test on the shipped model and the README's example
image and save a screenshot of the page there."""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]


@pytest.fixture
def browser(tmp_path):
    require(webdriver is not None, "selenium (in the test extra)")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    require(bool(chromium and chromedriver),
            "Debian's headless browser and its driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(chromedriver), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def served(plain_pipe, tmp_path):
    """`addsr serve` in its own process on a free port; once stopped, it must leave no temporary file."""
    require(serve is not None, WEB_EXTRA)
    model = [] if SCREENSHOT else ["--model", str(plain_pipe.save_pretrained(tmp_path / "model"))]
    port = free_port()
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    log = (tmp_path / "server.log").open("w")
    command = [sys.executable, "-m", "addsr.cli", "serve", "--port", str(port), "--device", "cpu", *model]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(temp)})
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, process, tmp_path / "server.log")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    left = [path for path in temp.rglob("*") if path.is_file() or path.name.startswith("addsr-serve-")]
    assert process.returncode == 0 and not left, (tmp_path / "server.log").read_text()


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"addsr serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"addsr serve did not answer on {url} within {timeout} s:\n{log.read_text()}")


def test_the_page_upscales_an_upload_in_a_browser(browser, served, tmp_path):
    url = served
    if SCREENSHOT:
        source = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
    else:
        source = tmp_path / "small.png"
        Image.radial_gradient("L").resize((32, 24)).convert("RGB").save(source)
    browser.get(url)
    wait = WebDriverWait(browser, 300)
    upload = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#inputs input[type=file]"))
    upload.send_keys(str(source))
    wait.until(lambda page: source.stem in page.find_element(By.ID, "inputs").text)  # once uploaded
    browser.find_element(By.CSS_SELECTOR, "#prompt-input textarea").send_keys("a test prompt")
    browser.find_element(By.ID, "upscale").click()

    images = wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#comparison img"))
    wait.until(lambda page: all(page.execute_script("return arguments[0].complete", image) for image in images))
    with Image.open(source) as original:
        expected = [original.width * 4, original.height * 4]
    sizes = [browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
             for image in images]
    assert sizes == [expected, expected]
    prompt = browser.find_element(By.CSS_SELECTOR, "#prompt-used textarea").get_attribute("value")
    assert prompt.endswith("a test prompt," + DEFAULT_ADDED_PROMPT)
    link = browser.find_element(By.CSS_SELECTOR, "#downloads a")
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
        (tmp_path / "download.png").write_bytes(response.read())
    with Image.open(tmp_path / "download.png") as download:
        assert list(download.size) == expected
    if SCREENSHOT:
        browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 200)
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(SCREENSHOT)
