"""Worker processes that die with their parent.

A ``spawn`` worker of a ``ProcessPoolExecutor`` does not notice that the process that started
it was killed (``kill -9``, the out-of-memory killer, a cancelled Slurm job step without its
process group): it still holds its own end of the task queue, so it finishes the cases already
queued — writing outputs nobody will record — and then waits forever. :func:`die_with_parent`,
called first in every worker (the pool's ``initializer``), ends the worker as soon as its
parent is gone:

* on Linux with ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker at once, even
  in the middle of an ITK filter that holds the GIL (the signal follows the *thread* that started
  the worker, so a pool must not outlive the thread that submits to it — a ``with`` block in
  that thread, as :func:`preprocessing.batch.run_batch` has, guarantees it);
* elsewhere (or if ``prctl`` is unavailable), a daemon thread that checks ``os.getppid()``
  every ``poll_s`` seconds and exits the process when it changed (the parent's children are
  handed to another process when it dies).

A worker killed this way leaves at most a temporary file, which the next run into the same
output folder removes (:mod:`preprocessing.outputs`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

#: ``PR_SET_PDEATHSIG`` of ``<linux/prctl.h>``.
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; ``False`` where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc symbol (e.g. a static or unusual libc)
        return False


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    """Exit this process (status 1, without clean-up) once its parent is no longer ``parent_pid``."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        threading.Event().wait(poll_s)


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> str:
    """Make this (worker) process end when ``parent_pid``, the process that started it, ends.

    Call it first in the worker (e.g. as, or from, a pool's ``initializer``), with the parent's
    ``os.getpid()`` taken in the parent. A parent that is already gone ends the worker at once.

    Args:
        parent_pid: the pid of the process that started this one.
        poll_s: how often the portable fallback checks the parent (seconds).

    Returns:
        How the worker is tied to its parent: ``"prctl"`` (Linux) or ``"poll"``.
    """
    if poll_s <= 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s}")
    how = "prctl" if _set_parent_death_signal(signal.SIGKILL) else "poll"
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if how == "poll":
        threading.Thread(target=_watch_parent, args=(parent_pid, poll_s), name="die-with-parent", daemon=True).start()
    return how
