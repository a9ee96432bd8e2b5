"""Several processes under ``jax.distributed``: starting the runtime, and failing clearly when a process is lost.

When a process of a ``jax.distributed`` job dies (killed, out of memory, its host gone), the others wait in
their next collective until the coordination service misses its heartbeats (``heartbeat_timeout_seconds``,
100 s by default) and then abort from C++ with a stack trace. ``watch`` puts a sign of life of its own in the
coordination service's key-value store every second and checks the others': a process whose sign has not
changed for ``lost_after_s`` seconds, or a coordinator that no longer answers, ends this process with one
line on stderr naming the lost process and how to continue (``note_resume``), and exit status 3, well
before the runtime's own abort. A collective that fails because its peer is gone (gloo's "Connection closed
by peer") gets the same line (``lost_process_message``). ``finished`` tells the others that this process is
done, so that its exit is not read as a loss.

Not covered: when process 0, which hosts the coordination service, is lost, the runtime's client in every
other process ends it at once from C++ ("Terminating process because the JAX distributed service detected
fatal errors") unless a failing collective reports it first. jaxlib's hook for that
(``missed_heartbeat_callback``) cannot call Python in jaxlib 0.10 (it aborts with ``std::bad_cast``).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Optional

__all__ = ["LOST_AFTER_S", "EXIT_LOST", "start", "watch", "finished", "note_resume", "lost_process_message",
           "exit_now"]

LOST_AFTER_S = 30.0  # seconds without a sign of life before a process counts as lost
EXIT_LOST = 3  # the exit status of a process that lost another (a fault of the environment)
_BEAT_S = 1.0
_PREFIX = "slowsde_jax/alive/"
_state = {"resume": None, "thread": None, "stop": threading.Event()}


def start(coordinator: Optional[str] = None, num_processes: Optional[int] = None, process_id: Optional[int] = None,
          *, lost_after_s: float = LOST_AFTER_S) -> None:
    """``jax.distributed.initialize`` from the three values, or from the cluster's environment when all are
    None (SLURM, ...), with gloo collectives for CPU devices; then ``watch(lost_after_s)``. Raises
    RuntimeError or ValueError when the runtime cannot start."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is None and num_processes is None and process_id is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    watch(lost_after_s)


def note_resume(hint: Optional[str]) -> None:
    """What a lost-process message tells the user to run to continue (e.g. the ``--resume`` command)."""
    _state["resume"] = hint


def finished() -> None:
    """Say that this process is done: the others stop watching it, and it stops watching them."""
    _state["stop"].set()
    client = _client()
    if client is not None:
        import jax

        try:
            client.key_value_set(f"{_PREFIX}{jax.process_index()}", "done", allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the coordinator may be gone already; nothing to tell then
            pass


def watch(lost_after_s: float = LOST_AFTER_S, on_lost: Optional[Callable[[str], None]] = None) -> None:
    """Watch the other processes of this ``jax.distributed`` job from a daemon thread (once per process; a
    no-op for a single process). ``on_lost(message)`` is called when one is lost; the default prints the
    message to stderr and ends this process with status ``EXIT_LOST``."""
    import jax

    client = _client()
    if client is None or jax.process_count() == 1 or _state["thread"] is not None:
        return
    me, n = jax.process_index(), jax.process_count()
    thread = threading.Thread(target=_watch, args=(client, me, n, float(lost_after_s), on_lost or _die, _state["stop"]),
                              name="slowsde-watchdog", daemon=True)
    _state["thread"] = thread
    thread.start()


_LOST_SIGNS = ("gloo", "connection closed", "connection reset", "heartbeat", "coordination service", "peer")


def lost_process_message(e: BaseException) -> Optional[str]:
    """The one-line message for an error that says a collective lost its peer process (gloo's "Connection
    closed by peer", the coordination service's heartbeat errors) in a several-process job, else None."""
    import jax

    if _client() is None or jax.process_count() == 1:
        return None
    text = str(e).strip()
    if not any(sign in text.lower() for sign in _LOST_SIGNS):
        return None
    first = text.splitlines()[0][:200] if text else type(e).__name__
    return (f"process {jax.process_index()} of {jax.process_count()} lost another process of this job "
            f"({first})" + _advice())


def exit_now(status: int) -> None:
    """End a process of a several-process job that cannot go on, at once: a normal exit would wait at the
    runtime's shutdown barrier for the lost process (``shutdown_timeout_seconds``, 300 s by default)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def _die(message: str) -> None:
    print(f"slowsde: error: {message}", file=sys.stderr, flush=True)
    exit_now(EXIT_LOST)


def _watch(client, me: int, n: int, lost_after_s: float, on_lost, stop: threading.Event) -> None:
    beat, seen = 0, {}  # process -> (its last sign, when this process saw it change)
    while not stop.is_set():
        beat += 1
        now = time.monotonic()
        try:
            client.key_value_set(f"{_PREFIX}{me}", str(beat), allow_overwrite=True)
            signs = dict(client.key_value_dir_get(_PREFIX))
        except Exception as e:  # noqa: BLE001 - the coordination service itself is gone
            if me == 0:
                return  # process 0 hosts the service: its own shutdown, not a loss
            on_lost(f"process {me} of {n} lost the coordinator, process 0 ({str(e).strip().splitlines()[0][:160]})"
                    + _advice())
            return
        for key, sign in signs.items():
            p = int(key.rsplit("/", 1)[-1])
            if p == me or sign == "done":
                seen.pop(p, None)
                continue
            if seen.get(p, (None,))[0] != sign:
                seen[p] = (sign, now)
        for p in range(n):
            if p == me or signs.get(f"{_PREFIX}{p}") == "done":
                continue
            since = seen.setdefault(p, (None, now))[1]
            if now - since > lost_after_s:
                on_lost(f"process {p} of {n} gave no sign of life for {lost_after_s:g} s (killed, out of memory, or "
                        f"its host lost): this job cannot go on without it" + _advice())
                return
        stop.wait(_BEAT_S)


def _advice() -> str:
    hint = _state["resume"]
    return f". Restart every process with: {hint}" if hint else ""
