"""Settings for the test suite: the project's settings, with every SQLite file in a fresh
temporary directory so tests never touch a user's databases and two runs never collide."""

import os
import tempfile

os.environ["MULTIDS_DATA_DIR"] = tempfile.mkdtemp(prefix="multids-tests-")

from multids.settings import *  # noqa: E402, F403
