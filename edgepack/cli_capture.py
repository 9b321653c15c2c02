"""Keeping frameworks' own log lines (TensorFlow, LiteRT, OpenVINO, absl, oneDNN) off the user's terminal.

The CLI owns its process, so while a packaging command runs it points file
descriptors 1 and 2 at a log file, and gives Python's ``sys.stdout`` /
``sys.stderr`` (which edgepack's consoles write to) the terminal's original
descriptors. What the frameworks printed is then kept in each bundle's
``report/tools.log`` when it says anything; ``--debug`` leaves it on the terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


class Captured:
    """The text the frameworks printed during the capture (filled when it ends)."""

    def __init__(self) -> None:
        self.text = ""

    def write_into(self, folders: list[Path], name: str = "tools.log") -> None:
        """Keep the log in each ``folder/report/`` (volatile, unsealed) when it holds anything."""
        if not self.text.strip():
            return
        for folder in folders:
            report = folder / "report"
            if report.is_dir():
                (report / name).write_text(self.text, encoding="utf-8")


@contextlib.contextmanager
def frameworks_to_log(enabled: bool = True) -> Iterator[Captured]:
    """Send what is written to fds 1 and 2 to a temporary log; Python's streams keep the terminal."""
    captured = Captured()
    if not enabled:
        yield captured
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    py_streams = sys.stdout, sys.stderr
    terminal_out = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    terminal_err = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            sys.stdout, sys.stderr = terminal_out, terminal_err
            yield captured
        finally:
            for stream in (terminal_out, terminal_err):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdout, sys.stderr = py_streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal_out.close()
            terminal_err.close()
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
