"""A static web page that generates and plays endless music in the browser, and a local server for it.

:func:`build_page` writes a folder that any static host (or :func:`serve`) can serve, with no
server-side code and nothing fetched from the internet when it runs::

    index.html, apollo-web.js, style.css    the page (apollo/page/)
    apollo.onnx, apollo.json                the generator and its spec (apollo.export)
    instruments.json                        the 128 General MIDI names
    soundfont.sf2                           the SoundFont the page plays through
    vendor/                                 onnxruntime-web (ort.wasm.min.js and its wasm) and
                                            js-synthesizer (FluidSynth compiled to WebAssembly)

The page runs the ONNX generator with onnxruntime-web, chains windows of a seeded noise tape as
:func:`apollo.generate.sample_probabilities` does, decodes as :meth:`apollo.roll.PianoRoll.decode`
does, and plays the notes through FluidSynth in an AudioWorklet.

The JavaScript packages come from the npm registry at build time: the first build runs ``npm pack``
for each (pinned in :data:`NPM_PACKAGES`) into a cache folder (:func:`npm_cache`) and copies the
prebuilt files it needs from there; later builds use the cache.
"""

from __future__ import annotations

import http.server
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

from apollo.errors import ApolloError

__all__ = ["NPM_PACKAGES", "WebPage", "address", "build_page", "fetch_npm_files", "make_server", "npm_cache", "serve"]

PAGE = Path(__file__).parent / "page"  # index.html, apollo-web.js, style.css
PAGE_FILES = ("index.html", "apollo-web.js", "style.css")

# npm package -> (version, files copied from its tarball into the page's vendor/ folder)
NPM_PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime-web": ("1.22.0", (
        "dist/ort.wasm.min.js",  # the WebAssembly-only build, a plain script (window.ort)
        "dist/ort-wasm-simd-threaded.mjs",  # loaded by it from ort.env.wasm.wasmPaths
        "dist/ort-wasm-simd-threaded.wasm",
        "package.json",  # its licence (MIT) is named there: the tarball has no LICENSE file
    )),
    "js-synthesizer": ("1.13.0", (
        "dist/js-synthesizer.worklet.min.js",  # the synthesizer in an AudioWorklet (window.JSSynth)
        "dist/js-synthesizer.min.js",  # the main-thread side of it
        "externals/libfluidsynth-2.4.6.js",  # FluidSynth 2.4.6 compiled to WebAssembly (LGPL-2.1)
        "externals/LICENSE.fluidsynth.txt",
        "LICENSE",
    )),
}


@dataclass(frozen=True)
class WebPage:
    """What :func:`build_page` wrote."""

    folder: Path
    model: str  # which model, as apollo.generate.ModelChoice says it
    soundfont: str  # which SoundFont, and where it came from
    spec: dict  # apollo.json


def npm_cache() -> Path:
    """Where npm tarballs' files are kept between builds: $APOLLO_CACHE/npm, else ~/.cache/apollo/npm."""
    root = os.environ.get("APOLLO_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apollo"
    return Path(root) / "npm"


def fetch_npm_files(name: str, cache: Path | None = None) -> Path:
    """The folder holding ``name``'s files of :data:`NPM_PACKAGES` (paths as in its tarball),
    fetched with ``npm pack`` the first time. Raises ApolloError with one line when npm fails."""
    version, files = NPM_PACKAGES[name]
    folder = (cache or npm_cache()) / f"{name}-{version}"
    if all((folder / file).is_file() for file in files):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise ApolloError(f"apollo web fetches {name}@{version} from the npm registry the first time and needs npm "
                          "for that: install Node.js and npm (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--loglevel=error"],
                              check=False, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode or not tarballs:
            errors = [line.removeprefix("npm error").strip() for line in done.stderr.splitlines()
                      if line.startswith("npm error") and " code " not in f" {line} "]
            reason = errors[0] if errors else f"exit status {done.returncode}, no tarball"
            raise ApolloError(f"npm pack {name}@{version} failed ({reason}): apollo web needs the npm registry "
                              f"the first time, to fill {folder.parent}")
        staging = Path(tempfile.mkdtemp(dir=_made(folder.parent)))
        try:
            _extract(tarballs[0], files, staging, f"{name}@{version}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _extract(tarball: Path, files: tuple[str, ...], into: Path, package: str) -> None:
    """``files`` (paths inside the npm tarball's ``package/`` folder) into the folder ``into``."""
    with tarfile.open(tarball) as tar:
        for file in files:
            try:
                member = tar.extractfile(f"package/{file}")
            except KeyError:
                member = None
            if member is None:
                raise ApolloError(f"{package}: its npm tarball has no {file}")
            (into / file).parent.mkdir(parents=True, exist_ok=True)
            (into / file).write_bytes(member.read())


def vendored_name(package: str, file: str) -> str:
    """The name of a package's file in the page's vendor/ folder: its own name, except the package's
    LICENSE and package.json, which get the package's name (LICENSE.js-synthesizer)."""
    if file in ("LICENSE", "package.json"):
        stem, _, suffix = file.partition(".")
        return f"{stem}.{package}" + (f".{suffix}" if suffix else "")
    return Path(file).name


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_page(
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    run: str | Path | None = None,
    runs_root: str | Path = "runs",
    soundfont: str | Path | None = None,
) -> WebPage:
    """Write the page into the folder ``out`` (made if needed; files of an earlier build replaced).

    The model is chosen as ``apollo generate`` chooses it; the SoundFont as ``apollo render`` does.
    Raises ApolloError with a one-line message.
    """
    from apollo.export import export_onnx
    from apollo.generate import find_model, load_model
    from apollo.instruments import gm_names
    from apollo.render import find_soundfont

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ApolloError(f"{out}: not a folder")
    # Everything that can fail for want of something is looked for before anything is written.
    load_model(find_model(checkpoint, run, runs_root), dcgan_only="apollo web")
    font = find_soundfont(soundfont)
    vendor = {name: fetch_npm_files(name) for name in NPM_PACKAGES}
    try:
        (out / "vendor").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ApolloError(f"{out}: cannot write ({error.strerror or error})") from None
    exported = export_onnx(out / "apollo.onnx", checkpoint=checkpoint, run=run, runs_root=runs_root)
    try:
        for name, folder in vendor.items():
            for file in NPM_PACKAGES[name][1]:
                target = vendored_name(name, file)
                shutil.copyfile(folder / file, out / "vendor" / target)
        for file in PAGE_FILES:
            shutil.copyfile(PAGE / file, out / file)
        shutil.copyfile(font.path, out / "soundfont.sf2")
        (out / "instruments.json").write_text(json.dumps(list(gm_names())) + "\n")
    except OSError as error:
        raise ApolloError(f"{out}: cannot write ({error.strerror or error})") from None
    return WebPage(out, str(exported.model), str(font), exported.spec)


# -- serving ---------------------------------------------------------------------------------------


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves one folder and nothing outside it: a path with a ``..`` component (however it is
    encoded) gets 403, and so does a file or link that resolves outside the folder."""

    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                      ".json": "application/json", ".onnx": "application/octet-stream",
                      ".sf2": "application/octet-stream"}

    def send_head(self):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path, errors="strict")
        parts = path.replace("\\", "/").split("/")
        if ".." in parts or "\x00" in path:
            self.send_error(403, "outside the page's folder")
            return None
        root = Path(self.directory).resolve()
        target = Path(self.translate_path(self.path)).resolve()
        if target != root and root not in target.parents:
            self.send_error(403, "outside the page's folder")
            return None
        return super().send_head()

    def log_message(self, format: str, *args) -> None:
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


def make_server(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False):
    """A threading HTTP server for ``folder`` (not started; port 0 picks a free one)."""
    folder = Path(folder)
    if not (folder / "index.html").is_file():
        raise ApolloError(f"{folder}: no index.html here (build the page first: apollo web {folder})")
    try:
        server = http.server.ThreadingHTTPServer((host, port), partial(PageHandler, directory=str(folder)))
    except OSError as error:
        raise ApolloError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    server.quiet = quiet
    return server


def address(server) -> str:
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, *, announce=print) -> None:
    """Serve ``folder`` until interrupted, after announcing its address."""
    server = make_server(folder, host, port)
    with server:
        announce(f"Serving {posixpath.normpath(str(folder))} at {address(server)} (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
