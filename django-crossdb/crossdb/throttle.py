"""``Throttle``: lets an expensive action (the overview's full integrity check) start at most
once per interval for the whole site, and remembers when it last ran and what it found, in
one small JSON file in ``crossdb.conf.state_dir()``."""

import fcntl
import json
import logging
import os
import time

from crossdb import conf

logger = logging.getLogger(__name__)


class Throttle:
    """Allow an action at most once per ``interval`` seconds across every process of the site.

    The state is one JSON file: ``{"started": epoch, "finished": epoch, "result": {...}}``.
    ``begin()`` takes an exclusive ``flock`` on it, so two requests at the same moment
    cannot both start; the start time is written before the work, so the limit also holds
    while the first one is still running.
    """

    def __init__(self, name, interval):
        self.name, self.interval = name, interval

    @property
    def path(self):
        return conf.state_dir() / f".{self.name}.json"

    def last(self):
        """Return the saved state, or {} when the action never ran (or the file is unreadable)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning(
                "%s: cannot read %s (%s); treating it as never run", self.name, self.path, exc
            )
            return {}

    def wait_seconds(self, now=None):
        """Seconds until the action may start again (0 when it may start now)."""
        started = self.last().get("started")
        if started is None:
            return 0
        now = time.time() if now is None else now
        return max(0, int(started + self.interval - now + 0.999))

    def run(self, action):
        """Run action() if allowed; return (ran, state). state["result"] is action's return."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False, self.last()  # another request is running it right now
            if self.wait_seconds():
                return False, self.last()
            state = {"started": time.time(), "finished": None, "result": None}
            self._save(state)
            try:
                state["result"] = action()
            finally:  # a failed run still counts, and must not look like one still running
                state["finished"] = time.time()
                self._save(state)
            return True, state
        finally:
            os.close(fd)  # releases the flock

    def _save(self, state):
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state), encoding="utf-8")
        temporary.replace(self.path)
