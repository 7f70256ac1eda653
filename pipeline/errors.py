"""A user's error as one line: what went wrong and where, from whatever Beam wrapped around it.

Beam re-raises a worker's exception inside its own (the in-process runner chains them; the multi-process
and portable runners send only the traceback text inside a RuntimeError), so the original cause is looked
for in the exception chain and in the text of every message. User errors are a bad option, file, row or
output folder, a lease held by another run, and the environment (``OSError``: disk full, read-only,
permission, missing path, network); the CLI prints them as one line with exit code 2. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from dataclasses import dataclass

from altsieve.core.config import ConfigError, InputError
from altsieve.core.lease import LeaseHeld, OutputFolderError

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, InputError, LeaseHeld, OutputFolderError, OSError)
# The names under which the same errors appear in a traceback's text (a worker in another process).
_USER_ERROR_NAMES = {cls.__name__ for cls in USER_ERRORS} | {
    "FileNotFoundError", "PermissionError", "NotADirectoryError", "IsADirectoryError", "FileExistsError",
    "BadGzipFile", "ArrowIOError",
}
# A traceback's last line: ``module.Class: message``, at the start of a line.
_EXCEPTION_LINE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*(?:Error|Exception|Held|BadGzipFile)): (?P<message>.+)$",
                             re.MULTILINE)
_STEP = re.compile(r" \[while running '(?P<step>[^']+)'\]")
_ERRNO = re.compile(r"\[Errno (?P<code>\d+)\]")
_FILENAME = re.compile(r": '(?P<path>[^']+)'\s*$")

_ADVICE = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
}
_AFTER_WRITE_FAILURE = ("; nothing half-written is kept: fix it and run the same command again, "
                        "the finished partitions are kept")


@dataclass(frozen=True)
class UserError:
    message: str
    exit_code: int = 2


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and every exception it was raised from or during, innermost causes last."""
    seen: set[int] = set()
    pending = [err]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _os_message(code: int | None, text: str, filename: str | None) -> str:
    what = _ADVICE.get(code or -1)
    where = f": {filename}" if filename else ""
    if what is None:
        return text.strip()
    hint = _AFTER_WRITE_FAILURE if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else ""
    return f"{what}{where}{hint}"


_OWN_ERRORS: tuple[type[BaseException], ...] = (ConfigError, InputError, LeaseHeld, OutputFolderError)
_OWN_ERROR_NAMES = {cls.__name__ for cls in _OWN_ERRORS}


def _os_error(err: OSError, output: str | None) -> str:
    code = err.errno
    if code is None:  # pyarrow and others put the errno in the text only
        found = _ERRNO.search(str(err))
        code = int(found["code"]) if found else None
    return _os_message(code, str(err), err.filename or (f"output folder {output}" if output else None))


def _from_text(text: str, own: bool, output: str | None) -> str | None:
    """The first error of the kind asked for in a traceback's text (a traceback prints the original cause first)."""
    for match in _EXCEPTION_LINE.finditer(text):
        name, message = match["name"].rsplit(".", 1)[-1], match["message"]
        if own and name in _OWN_ERROR_NAMES:
            return message
        if not own and name in _USER_ERROR_NAMES - _OWN_ERROR_NAMES:
            found, filename = _ERRNO.search(message), _FILENAME.search(message)
            where = filename["path"] if filename else (f"output folder {output}" if output else None)
            return _os_message(int(found["code"]) if found else None, message, where)
    return None


def user_error(err: BaseException, output: str | None = None) -> UserError | None:
    """The user's error inside ``err`` as one line, or None for a bug (which keeps its traceback).

    altsieve's own errors name the file, line, column or option, so the innermost of them wins over the
    OSError beneath it; an OSError alone (disk full, read-only) is named with its path, else ``output``.
    """
    chain = list(_chain(err))
    step = next((m["step"] for e in chain for m in [_STEP.search(str(e))] if m), None)
    message = next((str(e) for e in reversed(chain) if isinstance(e, _OWN_ERRORS)), None)
    message = message or next((m for e in chain for m in [_from_text(str(e), True, output)] if m), None)
    if message is None:
        message = next((_os_error(e, output) for e in reversed(chain) if isinstance(e, OSError)), None)
    message = message or next((m for e in chain for m in [_from_text(str(e), False, output)] if m), None)
    if message is None:
        return None
    message = _STEP.sub("", message).strip()
    if step and step not in message:
        message += f" (in step {step})"
    return UserError(message)
