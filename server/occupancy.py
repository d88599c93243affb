"""The occupancy table of ``ah run --workers N``: how many more sessions each worker can take.

Why it exists: all workers accept from one shared listening socket, and the kernel gives each new
connection to whichever worker calls ``accept()`` first. With a per-worker ``--max-sessions`` a full
worker would take connections and refuse them (1013) while a sibling still had room. With this table
each worker sees its siblings' room, so a full worker stops accepting while some sibling has room
(``ah.server.gate``), and the server refuses only when every worker is full.

It is a few bytes of shared memory (a ``memfd`` on Linux, an unlinked temporary file elsewhere) that
the supervisor creates and hands to every worker as an inherited file descriptor, like the listening
socket. One slot per worker, two 64-bit integers each:

* ``room``: sessions the worker can still take (0: full, draining, starting or dead);
* ``beat``: when the worker last wrote its slot (``time.monotonic`` in ms; the clock is system-wide).

A worker writes only its own slot. The supervisor zeroes a slot before it starts that worker and as
soon as the worker exits (a crash, SIGKILL), so a dead worker never looks like it has room; a slot not
written for ``STALE_S`` (a worker whose event loop is stuck, or one whose supervisor died before it
could zero the slot) counts as no room either. Aligned 8-byte stores and loads are single instructions
on the platforms we run on, so a reader never sees half a value; no lock is needed because every
slot has one writer at a time and readers only compare against zero.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time

SLOT_WORDS = 2  # room, beat
WORD = 8
STALE_S = 3.0  # a slot not written for this long does not count as room (the worker beats every 0.25 s)


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class OccupancyTable:
    """Shared slots, one per worker: ``room`` and a heartbeat. Indexes are 0-based."""

    def __init__(self, fd: int, owns_fd: bool = False) -> None:
        size = os.fstat(fd).st_size
        if size == 0 or size % (SLOT_WORDS * WORD):
            raise ValueError(f"fd {fd} is not an occupancy table (size {size})")
        self.fd = fd
        self.slots = size // (SLOT_WORDS * WORD)
        self._owns_fd = owns_fd
        self._map = mmap.mmap(fd, size)
        self._words = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, slots: int) -> OccupancyTable:
        """The supervisor's table: zeroed (no worker has room until it says so), inheritable."""
        if slots < 1:
            raise ValueError("at least one slot")
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("ah-occupancy", 0)
        else:  # macOS: an unlinked temporary file serves as well
            fd = os.dup(tempfile.TemporaryFile().fileno())
        os.ftruncate(fd, slots * SLOT_WORDS * WORD)
        os.set_inheritable(fd, True)
        return cls(fd, owns_fd=True)

    @classmethod
    def attach(cls, fd: int) -> OccupancyTable:
        """A worker's view of the table its supervisor made (the fd it inherited)."""
        return cls(fd)

    def publish(self, index: int, room: int) -> None:
        """A worker's own slot: how many more sessions it can take now (and that it is alive)."""
        base = index * SLOT_WORDS
        self._words[base] = max(0, room)
        self._words[base + 1] = _now_ms()

    def reset(self, index: int) -> None:
        """The supervisor, for a worker that is (re)starting or has exited: no room."""
        base = index * SLOT_WORDS
        self._words[base] = 0
        self._words[base + 1] = 0

    def room(self, index: int) -> int:
        """The room a worker published, or 0 if it has not written its slot for ``STALE_S``."""
        base = index * SLOT_WORDS
        room = int(self._words[base])
        if room <= 0 or _now_ms() - int(self._words[base + 1]) > STALE_S * 1000:
            return 0
        return room

    def others_have_room(self, index: int) -> bool:
        return any(self.room(i) > 0 for i in range(self.slots) if i != index)

    def close(self) -> None:
        self._words.release()
        self._map.close()
        if self._owns_fd:
            os.close(self.fd)
