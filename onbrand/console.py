"""What ``onbrand run`` shows on the terminal, and where everything else goes.

Quiet (the default): the terminal gets one line per stage (on a terminal, a spinner with the elapsed
time while the stage runs), the summary and one-line errors. Everything a stage writes goes to its
log, ``<out_dir>/stages/<stage>.log``: its own prints, ``logging`` records (vllm, transformers,
torch, bitsandbytes, wandb, accelerate, peft, datasets, httpx, ...), ``warnings.warn``, and, when
the run owns the process's real stdout/stderr, C-level output and the output of child processes
that inherit them (vLLM's workers). Verbose (``onbrand run -v``): all of it shows on the terminal as
before, and the Python-level part also goes to the stage log.

How:

- for the run, ``sys.stdout``/``sys.stderr`` are :class:`_Router` objects whose targets are switched
  per stage, so a library that keeps a reference to them follows along (vLLM's and transformers'
  log handlers are created at their first import, inside a stage);
- when they are the process's own file descriptors 1 and 2, those are pointed at the stage log
  (``dup2``) while the stage runs, and the terminal is written through duplicates of the originals;
- quiet: the root logger gets an INFO handler on the router, transformers' own handler is switched
  off and its records propagate to the root, warnings go through logging (``py.warnings``), and
  :data:`QUIET_ENV` is set for the run where the user has not set it.

vLLM's own logging setup is left on (``VLLM_CONFIGURE_LOGGING`` untouched): in-process its handler
writes to the router, and the ``vllm serve``/verify subprocesses, which inherit the environment,
keep their INFO lines in the files and pipes their callers already capture.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from onbrand.config import ConfigError

# Environment defaults of a quiet run (a value the user set always wins).
QUIET_ENV = {
    "TQDM_MININTERVAL": "5",  # progress bars write to a log file: one refresh per 5 s, not ten per s
}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def user_error_message(e: BaseException) -> str | None:
    """The one-line message for a mistake in what the user gave (a config, an input), else None."""
    if isinstance(e, ConfigError):
        return f"onbrand: config error: {e}"
    if isinstance(e, (ValueError, FileNotFoundError)):
        return f"onbrand: error: {e}"
    return None


class _Router:
    """Stands in for ``sys.stdout``/``sys.stderr``: writes go to the current ``targets``."""

    def __init__(self, target: TextIO):
        self.targets: tuple[TextIO, ...] = (target,)

    def write(self, s: str) -> int:
        for t in self.targets:
            t.write(s)
        return len(s)

    def flush(self) -> None:
        for t in self.targets:
            with contextlib.suppress(ValueError, OSError):
                t.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.targets[0], "isatty", lambda: False)())

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, errors, buffer, ...
        if name == "targets":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.targets[0], name)


def _owns_fds() -> bool:
    """sys.stdout/sys.stderr are the process's own descriptors 1 and 2 (pytest replaces them)."""
    try:
        return (
            sys.stdout is sys.__stdout__
            and sys.stderr is sys.__stderr__
            and sys.stdout.fileno() == 1
            and sys.stderr.fileno() == 2
        )
    except (AttributeError, OSError, ValueError):
        return False


def _dup(fd: int, like: TextIO) -> TextIO:
    enc = getattr(like, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=enc, errors="replace")


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


class RunOutput:
    """One ``onbrand run``'s terminal (:meth:`line`, :meth:`stage`, :meth:`stage_done`) and logs."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self._pending = ""  # a stage line started on a plain (non-terminal) output
        self._transformers = None  # transformers.utils.logging, once routed to the root logger

    # ------------------------------------------------------------------ run
    def __enter__(self) -> RunOutput:
        self._saved = (sys.stdout, sys.stderr)
        self._fds = not self.verbose and _owns_fds()
        if self._fds:
            for s in self._saved:
                s.flush()
            self.out, self.err = _dup(1, sys.stdout), _dup(2, sys.stderr)
        else:
            self.out, self.err = self._saved
        self.console = Console(file=self.out, highlight=False)
        self._stdout, self._stderr = _Router(self.out), _Router(self.err)
        sys.stdout, sys.stderr = self._stdout, self._stderr
        self._retargeted = self._retarget_handlers()
        self._env_added = [] if self.verbose else [k for k in QUIET_ENV if k not in os.environ]
        for key in self._env_added:
            os.environ[key] = QUIET_ENV[key]
        if not self.verbose:
            self._quiet_logging()
        return self

    def __exit__(self, *exc: object) -> None:
        for key in self._env_added:
            os.environ.pop(key, None)
        if not self.verbose:
            self._restore_logging()
        for handler, stream in self._retargeted:
            handler.setStream(stream)
        sys.stdout, sys.stderr = self._saved
        # Library handlers that kept the routers keep working after the run.
        self._stdout.targets, self._stderr.targets = (self._saved[0],), (self._saved[1],)
        if self._fds:
            self.out.close()
            self.err.close()

    def _retarget_handlers(self) -> list[tuple[logging.StreamHandler, Any]]:
        """Log handlers made before the run (torch's, at import) that write to the terminal: point
        them at the routers for the run. Handlers made later pick the routers up by themselves."""
        out, err = self._stdout, self._stderr
        routers = {
            id(self._saved[0]): out,
            id(sys.__stdout__): out,
            id(self._saved[1]): err,
            id(sys.__stderr__): err,
        }
        changed = []
        loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
        for logger in loggers:
            for h in getattr(logger, "handlers", []):
                if type(h) is logging.StreamHandler and id(h.stream) in routers:
                    changed.append((h, h.setStream(routers[id(h.stream)])))
        return changed

    def _quiet_logging(self) -> None:
        root = logging.getLogger()
        self._handler = logging.StreamHandler(self._stderr)
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(self._handler)
        self._root_level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        self._captured_warnings = getattr(logging, "_warnings_showwarning", None) is None
        if self._captured_warnings:
            logging.captureWarnings(True)

    def _restore_logging(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._root_level)
        if self._captured_warnings:
            logging.captureWarnings(False)
        if self._transformers is not None:
            self._transformers.enable_default_handler()
            self._transformers.disable_propagation()
            self._transformers = None

    def _route_transformers(self) -> None:
        """transformers logs through its own stderr handler: send its records to the root instead."""
        tl = sys.modules.get("transformers.utils.logging")
        if tl is not None and self._transformers is None:
            tl.disable_default_handler()
            tl.enable_propagation()
            self._transformers = tl

    # ------------------------------------------------------------------ terminal
    def line(self, text: str = "", err: bool = False) -> None:
        """Print on the terminal (never into a stage log)."""
        stream = self.err if err else self.out
        stream.write(text + "\n")
        stream.flush()

    @contextlib.contextmanager
    def stage(self, name: str, title: str, log_path: str | Path) -> Iterator[TextIO]:
        """Route everything to ``log_path`` (appended) while the block runs; show ``name`` meanwhile.

        On an exception its traceback goes into the log and the exception propagates."""
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a", encoding="utf-8", errors="replace", buffering=1)
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')}  {name}: {title}\n")
        self._stdout.flush()
        self._stderr.flush()
        if self._fds:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        self._stdout.targets = (self.out, log) if self.verbose else (log,)
        self._stderr.targets = (self.err, log) if self.verbose else (log,)
        if not self.verbose:
            self._route_transformers()
        try:
            with self._show(name, title):
                yield log
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            self._end_stage(log)

    def _end_stage(self, log: TextIO) -> None:
        self._stdout.flush()
        self._stderr.flush()
        if self._fds:
            for s in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    s.flush()
            _flush_c_stdio()
            os.dup2(self.out.fileno(), 1)
            os.dup2(self.err.fileno(), 2)
        self._stdout.targets, self._stderr.targets = (self.out,), (self.err,)
        log.close()

    @contextlib.contextmanager
    def _show(self, name: str, title: str) -> Iterator[None]:
        if self.verbose:
            self.line(f"\n{name}: {title}")
            yield
        elif self.console.is_terminal and not self.console.is_dumb_terminal:
            room = self.console.width - len(name) - 13  # spinner, "name:", elapsed h:mm:ss, spaces
            title = title if len(title) <= room else title[: max(room - 1, 0)] + "…"
            columns = (SpinnerColumn(), TextColumn(f"{name}:", markup=False), TimeElapsedColumn(),
                       TextColumn(title, markup=False))  # fmt: skip
            progress = Progress(*columns, console=self.console, transient=True,
                                redirect_stdout=False, redirect_stderr=False)  # fmt: skip
            progress.add_task(name, total=None)
            with progress:
                yield
        else:
            self._pending = f"{name}: "
            self.out.write(self._pending)
            self.out.flush()
            yield

    def stage_done(self, name: str, status: str) -> None:
        """End the stage's line: ``[3/7] sft: done in 42 s``."""
        text = status if self._pending else f"{name}: {status}"
        self._pending = ""
        self.line(text)
