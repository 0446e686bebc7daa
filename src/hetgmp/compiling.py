"""Say once, on stderr, when numba compiles kernels instead of loading them from its cache.

The first run of a fresh install compiles every numba kernel it meets (about a
minute for `hetgmp demo`'s partition, against 0.4 s once cached), which looks
like a hang unless said. numba fires its "numba:compile" event only on a
cache miss, so a listener on it speaks exactly when compiling starts:

    hetgmp partition: compiling kernels, once per install (up to a minute; later runs load them from numba's cache)
"""

from __future__ import annotations

import sys
import threading

_installed = False
_said = threading.Event()


def announce_compiles(prog: str) -> None:
    """Install (once per process) the listener that prints the note at the first compile."""
    global _installed
    if _installed:
        return
    from numba.core import event

    class _FirstCompile(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            if not _said.is_set():
                _said.set()
                print(f"{prog}: compiling kernels, once per install (up to a minute; later runs load them from numba's cache)",
                      file=sys.stderr, flush=True)

        def on_end(self, ev: event.Event) -> None:
            pass

    event.register("numba:compile", _FirstCompile())
    _installed = True
