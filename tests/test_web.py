"""`apollo web`: the page builds, its server keeps to its folder, and in headless Chromium the page
decodes and chains as Python does, plays through its SoundFont, and logs no error."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import mido
import numpy as np
import pytest
import torch
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo.decoding import Decoding
from apollo.errors import ApolloError
from apollo.generate import (
    Chaining,
    find_model,
    load_model,
    noise_tape,
    sample_probabilities,
)
from apollo.web import NPM_PACKAGES, address, build_page, make_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SEEDS = range(6)
AGREEMENT = 0.999  # cells equal; a probability within ~1e-6 of a threshold may flip (docs/generate.md)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The bundled model's page, built through the command line."""
    out = tmp_path_factory.mktemp("web") / "page"
    result = CliRunner().invoke(cli, ["web", str(out), "--checkpoint", "bundled"])
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.output and "apollo web" in result.output
    return out


@pytest.fixture(scope="module")
def server(page):
    server = make_server(page, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def get(server, path: str) -> tuple[int, bytes, str]:
    """A real HTTP request with the path sent exactly as given."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, response.getheader("Content-Type", "")


def test_the_page_holds_everything_it_needs(page):
    for name in ("index.html", "apollo-web.js", "style.css", "apollo.onnx", "apollo.json", "instruments.json",
                 "soundfont.sf2", "vendor/ort.wasm.min.js", "vendor/ort-wasm-simd-threaded.wasm",
                 "vendor/ort-wasm-simd-threaded.mjs", "vendor/js-synthesizer.worklet.min.js",
                 "vendor/libfluidsynth-2.4.6.js", "vendor/LICENSE.fluidsynth.txt"):
        assert (page / name).is_file() and (page / name).stat().st_size > 0, name
    assert (page / "soundfont.sf2").read_bytes()[8:12] == b"sfbk"
    instruments = json.loads((page / "instruments.json").read_text())
    assert len(instruments) == 128 and instruments[40] == "Violin"
    assert json.loads((page / "apollo.json").read_text())["format"] == "apollo-onnx/3"
    html = (page / "index.html").read_text()
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts and all(not re.match(r"\w+:|//", src) and (page / src).is_file() for src in scripts)
    # nothing is fetched from another origin when the page runs: the wasm comes from vendor/
    assert "wasmPaths" in (page / "apollo-web.js").read_text()
    assert not re.search(r"https?://", (page / "apollo-web.js").read_text())


def test_the_server_serves_the_folder_and_nothing_outside_it(page, server):
    (page.parent / "secret.txt").write_text("SECRET-7d3f")
    status, body, _ = get(server, "/")
    assert status == 200 and b"apollo-web.js" in body
    assert get(server, "/vendor/ort-wasm-simd-threaded.wasm")[2] == "application/wasm"
    assert get(server, "/vendor/ort-wasm-simd-threaded.mjs")[2].startswith("text/javascript")
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/..%2fsecret.txt",
                 "/%2e%2e%2fsecret.txt", "/vendor/../../secret.txt", "/vendor/%2e%2e/%2e%2e/secret.txt",
                 "/..\\secret.txt", "/%2e%2e%5csecret.txt", "/vendor/..%2f..%2fsecret.txt"):
        status, body, _ = get(server, path)
        assert status in (403, 404), path
        assert b"SECRET-7d3f" not in body, path
    os.symlink(page.parent / "secret.txt", page / "link.txt")
    try:
        status, body, _ = get(server, "/link.txt")
        assert status == 403 and b"SECRET-7d3f" not in body
    finally:
        (page / "link.txt").unlink()


def test_serve_listens_on_localhost_and_prints_the_address(page):
    script = "import sys; from apollo.web import serve; serve(sys.argv[1], port=0, announce=lambda s: print(s, flush=True))"
    process = subprocess.Popen([sys.executable, "-c", script, str(page)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        connection = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=10)
        connection.request("GET", "/index.html")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        process.terminate()
        process.wait(10)


def test_without_npm_the_first_build_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("APOLLO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm there
    with pytest.raises(ApolloError) as error:
        build_page(tmp_path / "out", checkpoint="bundled")
    message = str(error.value)
    assert "\n" not in message and "npm" in message and next(iter(NPM_PACKAGES)) in message
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_failing_npm_is_quoted_in_one_line(tmp_path, monkeypatch):
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    npm.write_text("#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\necho 'npm error network request failed' >&2\nexit 1\n")
    npm.chmod(0o755)
    monkeypatch.setenv("APOLLO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(npm.parent))
    with pytest.raises(ApolloError) as error:
        build_page(tmp_path / "out", checkpoint="bundled")
    assert "\n" not in str(error.value) and "(network request failed)" in str(error.value)


def test_a_filled_cache_needs_no_npm(page, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # the page fixture filled the cache
    built = build_page(tmp_path / "again", checkpoint="bundled")
    assert sorted(p.name for p in (built.folder / "vendor").iterdir()) == sorted(p.name for p in (page / "vendor").iterdir())


def test_serving_a_folder_without_a_page_is_one_line(tmp_path):
    with pytest.raises(ApolloError, match="no index.html"):
        make_server(tmp_path, port=0)


# -- in headless Chromium -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    """Chromium showing the page, ready (the model loaded and its first windows generated)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--autoplay-policy=no-user-gesture-required", "--window-size=1100,760",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(120)
    try:
        driver.get(address(server))
        state = wait_for(driver, lambda s: s["ready"] or s["status"].startswith("Error"))
        assert state["ready"], state["status"]
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = driver.execute_script("return window.apolloState ? apolloState() : null")
        if state and condition(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the page says {state}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def bundled():
    generator, spec = load_model(find_model("bundled"))
    return generator, spec


def python_cells(probabilities: np.ndarray, spec) -> np.ndarray:
    return spec.decoding.decode(probabilities, spec.encoding, spec.grid, spec.tempo).cells


def page_cells(digits: str, n_pitches: int) -> np.ndarray:
    return np.frombuffer(digits.encode(), dtype=np.uint8).reshape(n_pitches, -1) - ord("0")


def test_the_page_decodes_a_window_as_python_does(browser, bundled):
    generator, spec = bundled
    equal = total = notes = 0
    for seed in SEEDS:
        noise = generator.sample_noise(1, torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            expected = python_cells(generator(noise)[0].numpy(), spec)
        got = page_cells(browser.execute_script("return await apolloDecodeWindow(arguments[0])",
                                                noise.flatten().tolist()), spec.grid.n_pitches)
        assert got.shape == expected.shape == (64, 256)
        equal += int((got == expected).sum())
        total += got.size
        notes += int((expected == 2).sum())
    assert notes > 100 * len(SEEDS)  # the windows have music in them
    assert equal / total >= AGREEMENT, f"{total - equal} of {total} cells differ"


def test_the_page_fills_silent_steps_as_python_does(browser, bundled):
    """A decoding with ``fill``; a high threshold leaves many silent steps for it to fill."""
    generator, spec = bundled
    decoding = Decoding(threshold=0.8, onset_threshold=0.8, fill=0.3)
    noise = generator.sample_noise(1, torch.Generator().manual_seed(SEEDS[0]))
    with torch.inference_mode():
        probabilities = generator(noise)[0].numpy()
    expected = decoding.decode(probabilities, spec.encoding, spec.grid, spec.tempo).cells
    unfilled = replace(decoding, fill=None).decode(probabilities, spec.encoding, spec.grid, spec.tempo).cells
    filled_steps = int((expected.any(axis=0) & ~unfilled.any(axis=0)).sum())
    assert filled_steps > 10  # the fill has work to do here
    got = page_cells(browser.execute_script("return await apolloDecodeWindow(arguments[0], arguments[1])",
                                            noise.flatten().tolist(), decoding.to_dict()), spec.grid.n_pitches)
    assert (got == expected).mean() >= AGREEMENT, f"{(got != expected).sum()} cells differ"


def test_the_page_chains_windows_as_python_does(browser, bundled):
    generator, spec = bundled
    chain = Chaining.of(generator)
    width, hop_columns, window, hop = chain.width, chain.hop_columns, chain.window, chain.hop
    n_windows = 5
    for seed in (3, 11):
        tape = noise_tape(generator, width + (n_windows - 1) * hop_columns, seed)  # [C, H, columns]
        columns = tape.permute(2, 0, 1).flatten().tolist()  # column by column, each [C, H]
        result = browser.execute_script("return await apolloChain(arguments[0])", columns)
        got = page_cells(result["cells"], spec.grid.n_pitches)
        # every step the stream finished: all but the last window's fade-out and a decoding look-ahead
        assert result["steps"] == (n_windows - 1) * hop + window - (window - hop) - (spec.decoding.effective[2] - 1)
        expected = python_cells(sample_probabilities(generator, window + (n_windows - 1) * hop, seed), spec)
        expected = expected[:, : result["steps"]]
        assert (got == expected).mean() >= AGREEMENT, f"seed {seed}: {(got != expected).sum()} cells differ"


def test_a_window_takes_far_less_than_its_playing_time(browser, bundled):
    _, spec = bundled
    ms = browser.execute_script("return await apolloBench(4)")
    playing_ms = spec.n_steps / spec.grid.steps_per_beat * 60_000 / spec.tempo  # 16 bars: 38 s at 100 bpm
    assert 0 < ms < playing_ms / 20


def test_play_sounds_and_the_midi_is_what_was_played(browser):
    browser.find_element("id", "play").click()
    state = wait_for(browser, lambda s: s["audio"] == "running" and s["playStep"] > 8 and s["level"] > 1e-3,
                     timeout=30)
    assert state["playing"] and state["scheduled"] > 0
    generated = state["generatedSteps"]
    browser.find_element("id", "tempo").send_keys("\ue014" * 200)  # arrow right up to the fastest, 200 bpm
    # generation keeps ahead of the playhead, window after window
    state = wait_for(browser, lambda s: s["generatedSteps"] > generated + 128, timeout=40)
    assert state["level"] > 0
    browser.execute_script("""const tempo = document.getElementById("tempo");
        for (const bpm of [40, 200, 40, 200]) { tempo.value = bpm; tempo.dispatchEvent(new Event("input")); }""")
    time.sleep(1.0)
    # A busy page (or machine) runs the scheduler late, and one run then covers many steps at once:
    # short notes that start and end inside it still get their note-off.
    browser.execute_script("const t = performance.now(); while (performance.now() - t < 1500) {}")
    state = wait_for(browser, lambda s: s["playStep"] > state["playStep"] + 40, timeout=20)
    assert state["hanging"] == 0
    browser.find_element("id", "play").click()  # stop
    # The events as the synthesizer's sequencer plays them (by tick, then in the order sent): every
    # note-off ends a sounding note-on of an earlier tick (none hangs, whatever the tempo did), and
    # no note-on lands on a key that still sounds (a note struck again is ended first).
    events = [(tick, order, on, key) for order, (on, key, tick) in enumerate(browser.execute_script("return apolloSent()"))]
    sounding: dict[int, int] = {}  # key -> tick of its note-on
    for tick, order, on, key in sorted(events):
        if on:
            assert key not in sounding, (order, key, tick)
            sounding[key] = tick
        else:
            assert key in sounding and tick > sounding.pop(key), (order, key, tick)
    assert len(events) > 20
    state = wait_for(browser, lambda s: not s["playing"])
    midi = mido.MidiFile(file=io.BytesIO(bytes(browser.execute_script("return apolloMidi()"))))
    ons = [m for m in midi.tracks[0] if m.type == "note_on" and m.velocity > 0]
    offs = [m for m in midi.tracks[0] if m.type == "note_off"]
    assert ons and len(ons) == len(offs)  # every note ends
    assert midi.length > 0
    assert not browser.find_element("id", "download").get_attribute("disabled")


def test_a_new_seed_gives_new_music(browser):
    before = browser.execute_script("return apolloState()")
    browser.find_element("id", "seed").click()
    state = wait_for(browser, lambda s: s["seed"] != before["seed"] and s["generatedSteps"] > 256)
    assert state["notes"] > 0


def test_no_console_errors(browser):  # last: it reads the log of everything the tests above did
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
