"""The studio in a real browser: Playwright (Python) driving Debian's chromium against the in-process server.

An error first (empty prompt: the toast says so), then a generation as a person does it: type a prompt,
click Generate, wait for the finished player. No error may be shown; a screenshot is saved (in the test's
tmp dir, and in $MUSICGEN_SCREENSHOT_DIR when set). Skipped when chromium is missing outside CI; in CI
(CI=true) a missing browser is a failure: .ci/run installs it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.studio_server import Server

from musicgen.studio import waits

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run must install Debian's chromium", pytrace=False)
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def page(tmp_path: Path):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       args=ARGS, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def test_generate_in_the_browser(server: Server, page, tmp_path: Path) -> None:
    expect = sync_api.expect
    page.goto(server.url, wait_until="load")
    generate = page.get_by_role("button", name="Generate", exact=True)
    errors = page.locator(".toast-body.error")

    generate.click()  # nothing typed yet: a clear message, then the app goes on serving
    expect(errors.first).to_contain_text("The prompt is empty")
    page.locator(".toast-close").first.click()
    expect(errors).to_have_count(0)

    page.get_by_label("Prompt").fill("lofi hip hop beat with mellow piano")
    seconds = page.get_by_label("number input for Duration (seconds)")
    seconds.fill("4")
    seconds.press("Enter")
    generate.click()

    info = page.locator("#info")
    expect(info).to_contain_text("Seed", timeout=120_000)
    expect(info).to_contain_text("4.0 s of audio")
    expect(page.locator("#result audio").first).to_be_attached()  # the finished player, with its WAV to download
    expect(page.locator("#result a[download]")).to_have_attribute("href", re.compile(r"musicgen-\d+-[0-9a-f]{12}\.wav"))
    page.wait_for_function("() => document.querySelector('#picture img')?.naturalWidth > 0")  # the picture
    if server.studio.stream:  # the live preview played the streamed chunks (Gradio needs ffmpeg for them)
        page.wait_for_function("() => document.querySelector('#live audio')?.duration > 3.9")
    expect(errors).to_have_count(0)

    page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
    out = os.environ.get("MUSICGEN_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "studio.png", Path(out) / "studio.png")

    # takes: two variations from one click, each in its own player with its seed (the next seed for take 2)
    takes = page.get_by_label("number input for Takes")
    takes.fill("2")
    takes.press("Enter")
    generate.click()
    expect(info).to_contain_text("Seeds", timeout=120_000)
    expect(page.locator("#take-2 audio").first).to_be_attached()
    expect(page.locator("#result")).to_contain_text("Take 1 · seed")
    seeds = [int(x) for x in re.findall(r"seed (\d+)", page.locator("#result").inner_text()
                                        + page.locator("#take-2").inner_text())]
    assert len(seeds) == 2 and seeds[1] == seeds[0] + 1
    if server.studio.stream:  # the live preview played take 1 as it was made
        page.wait_for_function("() => document.querySelector('#live audio')?.duration > 3.9")
    expect(errors).to_have_count(0)
    page.screenshot(path=str(tmp_path / "studio-takes.png"), full_page=True)
    if out:
        shutil.copy(tmp_path / "studio-takes.png", Path(out) / "studio-takes.png")
    takes.fill("1")
    takes.press("Enter")

    # Stop: a long generation is cut short, the page says so, and the next one runs
    seconds.fill("30")
    seconds.press("Enter")
    generate.click()
    status = page.locator("#status")
    expect(status).to_contain_text("Generating:")
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(status).to_contain_text("Stopped")
    expect(info).to_have_text("")  # the stopped run had cleared the last result and produced none
    seconds.fill("1")
    seconds.press("Enter")
    # the diffusion decoder: on a CPU the page first says how long it will take (timed here) and asks when that is
    # over two minutes (here: over 0 s, so the tiny decoder asks too); Use EnCodec instead, then Generate anyway
    server.studio.confirm_above = 0.0
    try:
        page.get_by_label("Multi-band diffusion").check()
        generate.click()
        confirm = page.locator("#confirm").first  # (Gradio gives a group's id to two nested elements)
        expect(confirm).to_contain_text("The multi-band diffusion decoder will take about")
        expect(confirm).to_contain_text("80 model passes of about")
        page.screenshot(path=str(tmp_path / "studio-confirm.png"), full_page=True)
        if out:
            shutil.copy(tmp_path / "studio-confirm.png", Path(out) / "studio-confirm.png")
        page.get_by_role("button", name="Use EnCodec instead").click()
        expect(info).to_contain_text("1.0 s of audio", timeout=120_000)
        expect(page.get_by_label("EnCodec")).to_be_checked()
        expect(confirm).to_be_hidden()
        page.get_by_label("Multi-band diffusion").check()
        generate.click()
        expect(confirm).to_be_visible()
        expect(info).to_have_text("")  # nothing ran
        page.get_by_role("button", name="Generate anyway").click()
        expect(info).to_contain_text("1.0 s of audio", timeout=120_000)
    finally:
        server.studio.confirm_above = waits.CONFIRM_ABOVE
    expect(page.locator("#result-mbd audio").first).to_be_attached()
    expect(page.locator("#result")).to_contain_text("EnCodec")
    expect(errors).to_have_count(0)
    page.screenshot(path=str(tmp_path / "studio-mbd.png"), full_page=True)
    if out:
        shutil.copy(tmp_path / "studio-mbd.png", Path(out) / "studio-mbd.png")

    # continue from audio: upload a clip, the piece starts with it and the summary says so
    clip = tmp_path / "clip.wav"
    sf.write(str(clip), (0.4 * np.sin(2 * np.pi * 440 * np.arange(48000) / 32000)).astype(np.float32), 32000)
    page.get_by_text("Melody or audio to continue (optional)").click()  # the accordion keeps the page short
    page.get_by_role("tab", name="Continue").click()
    page.locator("#continue input[type=file]").set_input_files(str(clip))
    expect(page.locator("#continue audio").first).to_be_attached()  # the uploaded clip's player
    page.get_by_label("EnCodec").check()
    seconds.fill("3")
    seconds.press("Enter")
    generate.click()
    expect(info).to_contain_text("Continued from your 1.5 s clip", timeout=120_000)
    expect(info).to_contain_text("3.0 s of audio")
    expect(errors).to_have_count(0)
    page.screenshot(path=str(tmp_path / "studio-continue.png"), full_page=True)
    if out:
        shutil.copy(tmp_path / "studio-continue.png", Path(out) / "studio-continue.png")

    # an example melody (assets/, synthesised): one click puts it in the melody input
    page.get_by_role("tab", name="Melody").click()
    page.get_by_text("ode_to_joy.wav").first.click()
    expect(page.locator("#melody audio").first).to_be_attached()

    # history: this browser's takes survive a reload; a click restores a take's settings and its file
    hist = page.locator("#history")
    expect(hist).to_contain_text("lofi hip hop beat with mellow piano")
    page.reload(wait_until="load")
    expect(hist).to_contain_text("lofi hip hop beat with mellow piano")
    prompt = page.get_by_label("Prompt")
    prompt.fill("something else")
    hist.get_by_text("lofi hip hop beat with mellow piano").first.click()
    expect(prompt).to_have_value("lofi hip hop beat with mellow piano")
    expect(page.get_by_label("number input for Duration (seconds)")).to_have_value("3")  # the newest such take
    expect(page.locator("#result audio").first).to_be_attached()
    expect(page.locator("#status")).to_contain_text("Settings restored")
    expect(errors).to_have_count(0)
