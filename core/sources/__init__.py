"""The shop's own sources: the built-in demo files and the synthetic generator.

crossdb reads them through its settings (``multids/settings.py``: ``CROSSDB``'s
``DEFAULT_SOURCE`` and ``GENERATOR``); the file and rejects sources are crossdb's
(``crossdb.sources``).
"""

from pathlib import Path

from crossdb.sources import FileSource

from core.sources.synthetic import FIRST_ID, SyntheticSource

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_data"

__all__ = ["DEMO_DIR", "FIRST_ID", "SyntheticSource", "demo_source"]


def demo_source():
    """The built-in demo data: ten rows per table with known rejections."""
    source = FileSource(DEMO_DIR)
    source.label = "demo data"
    return source
