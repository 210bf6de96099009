"""Verified downloads.

A download streams into ``<dest>.part`` under a cross-process file lock, resumes a partial
file with an HTTP ``Range`` request, retries with backoff, checks size and sha256 and only
then renames the file into place. requests and rich are imported where they are used.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowlight_cli.constants import APP_NAME, ENV_WEIGHTS_URL, VERSION
from lowlight_cli.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import requests

_HASH_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Lowercase hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class DownloadOptions:
    """Network behaviour of downloads (tests shrink the timeouts and delays).

    Attributes:
        connect_timeout: seconds to establish a connection.
        read_timeout: seconds without receiving a byte before giving up on a response.
        retries: extra attempts per URL after connection errors, timeouts and 5xx (not 4xx).
        backoff: first delay between attempts in seconds; doubles each time.
        max_backoff: cap on one delay.
        lock_timeout: seconds to wait for another process fetching the same file.
        chunk_size: bytes per read.
        progress: show a progress bar; None means only when stderr is a terminal.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    lock_timeout: float = 3600.0
    chunk_size: int = 1 << 16
    progress: bool | None = None


DEFAULT_DOWNLOAD = DownloadOptions()


class _RetryableError(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, short body)."""


class _FatalError(Exception):
    """A failure another attempt at the same URL will not fix (4xx, bad URL)."""


@contextmanager
def _file_lock(target: Path, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise WeightsError(
            f"timed out after {timeout:.0f} s waiting for another lowlight process to fetch "
            f"{target.name}",
            hint=f"if no other lowlight is running, delete {target}.lock",
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _progress_wanted(options: DownloadOptions) -> bool:
    if options.progress is not None:
        return options.progress
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    options: DownloadOptions,
    advance: Any,
) -> None:
    """One HTTP attempt: append to (Range honoured) or rewrite ``part``."""
    import requests

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return  # a run that died before the rename left a whole file; it is verified next
    # Byte ranges refer to the stored bytes, so ask for no content encoding.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = session.get(
            url,
            stream=True,
            headers=headers,
            timeout=(options.connect_timeout, options.read_timeout),
        )
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _RetryableError(f"cannot connect: {exc}") from exc
    except requests.RequestException as exc:
        raise _FatalError(str(exc)) from exc
    with resp:
        status = resp.status_code
        if status == 416 and have:
            # The server has no bytes after ours: our partial file cannot be extended.
            part.unlink()
            raise _RetryableError("server rejected the resume range; starting over")
        if status >= 500:
            raise _RetryableError(f"HTTP {status} {resp.reason}")
        if status not in (200, 206):
            raise _FatalError(f"HTTP {status} {resp.reason}")
        mode = "wb"
        if status == 206:
            content_range = resp.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if not have or not match or int(match.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _RetryableError(f"unexpected partial response ({content_range!r})")
            mode = "ab"
        else:
            # 200: the server ignored Range (or there was none); start from scratch.
            have = 0
        advance(completed=have)
        try:
            with open(part, mode) as fh:
                for chunk in resp.iter_content(chunk_size=options.chunk_size):
                    fh.write(chunk)
                    advance(advance=len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _RetryableError(f"connection lost: {exc}") from exc
        except requests.RequestException as exc:
            # ChunkedEncodingError: the server closed the connection mid-body.
            raise _RetryableError(f"transfer interrupted: {exc}") from exc
    got = part.stat().st_size
    if size is not None and got < size:
        raise _RetryableError(f"connection closed after {got} of {size} bytes")


def download_file(
    urls: Sequence[str],
    dest: str | Path,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    size: int | None = None,
    options: DownloadOptions | None = None,
) -> Path:
    """Download the first URL that works into ``dest``, verified, resumable, atomically.

    Under a lock on ``dest.lock``: returns at once if another process already placed ``dest``;
    otherwise streams into ``dest.part`` (resuming it with ``Range``), retries connection
    errors, timeouts and 5xx with exponential backoff, moves on to the next URL after a 4xx or
    exhausted retries, checks size and sha256 and then renames ``.part`` to ``dest``.

    Args:
        urls: primary URL first, then mirrors.
        dest: final path (its directory is created).
        sha256: expected full digest; or ``sha256_prefix``: expected leading digits.
        size: expected byte count (enables resume sanity checks and early-close detection).
        options: timeouts, retries, progress; default :data:`DEFAULT_DOWNLOAD`.

    Returns:
        ``dest``.

    Raises:
        WeightsError: every URL failed, or the checksum did not match (the partial file is
            deleted; the message has the expected and actual digests).
    """
    import requests

    options = options or DEFAULT_DOWNLOAD
    dest = Path(dest)
    if not urls:
        raise WeightsError(f"no download URL for {dest.name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _file_lock(dest, options.lock_timeout):
        if dest.is_file() and (size is None or dest.stat().st_size == size):
            return dest  # another process finished it while we waited for the lock
        failures: list[str] = []
        with _progress(dest.name, size, options) as advance, requests.Session() as session:
            session.headers["User-Agent"] = f"{APP_NAME}/{VERSION}"
            for url in urls:
                error = _try_url(session, url, part, size, options, advance)
                if error is None:
                    break
                failures.append(f"{url}: {error}")
            else:
                raise WeightsError(
                    f"could not download {dest.name}: " + "; ".join(failures),
                    hint=f"check the network, set {ENV_WEIGHTS_URL} to a mirror, or download "
                    f"the file yourself and pass --weights PATH",
                )
        _verify_part(part, dest.name, urls, sha256=sha256, sha256_prefix=sha256_prefix, size=size)
        os.replace(part, dest)
    return dest


def _try_url(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    options: DownloadOptions,
    advance: Any,
) -> str | None:
    """Attempt ``url`` with retries; None on success, else the last error text."""
    last = ""
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(min(options.backoff * 2 ** (attempt - 1), options.max_backoff))
        try:
            _fetch_once(session, url, part, size, options, advance)
            return None
        except _FatalError as exc:
            return str(exc)  # a 4xx will not change on retry
        except _RetryableError as exc:
            last = str(exc)
    return f"{last} (after {options.retries + 1} attempts)"


def _verify_part(
    part: Path,
    name: str,
    urls: Sequence[str],
    *,
    sha256: str | None,
    sha256_prefix: str | None,
    size: int | None,
) -> None:
    actual = file_sha256(part)
    got = part.stat().st_size
    ok = (size is None or got == size) and (
        (sha256 is None or actual == sha256)
        and (sha256_prefix is None or actual.startswith(sha256_prefix))
    )
    if ok:
        return
    part.unlink(missing_ok=True)
    expected = sha256 or (f"{sha256_prefix}..." if sha256_prefix else "any")
    raise WeightsError(
        f"checksum mismatch for {name} from {urls[0]}: expected sha256 {expected}"
        + (f" ({size} bytes)" if size is not None else "")
        + f", got {actual} ({got} bytes); deleted {part.name}",
        hint="retry; if it happens again the server's file changed or is corrupt: "
        "report it, or use a mirror",
    )


@contextmanager
def _progress(name: str, size: int | None, options: DownloadOptions) -> Iterator[Any]:
    """Yield ``advance(completed=..|advance=..)``: a rich bar on stderr, or a no-op."""
    if not _progress_wanted(options):
        yield lambda **_: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(name, total=size)
        yield lambda **kw: bar.update(task, **kw)
