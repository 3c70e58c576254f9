"""The README's commands run as written, and every relative link of the docs leads somewhere.

The README's ``sh`` and ``console`` blocks are read in order; each of their lines that runs
``python manage.py ...`` (after any ``NAME=value`` assignments, continuation lines joined,
a console block's ``$`` prompt dropped) is run with this interpreter against SQLite files
in a temporary data directory, with no ``*_DATABASE_URL`` in the environment, as
``tests.conftest.manage`` runs commands. Before them the test runs what ``make demo`` runs
(the Makefile's ``demo`` recipe), since the README starts there. Each must exit 0, or the
code its comment gives (``# refused, exit 1: ...``). They run in a temporary working
directory, whose ``data/`` holds the demo files (the README's example of ``--from DIR``).

Links: every ``[text](target)`` outside code in ``README.md``, ``docs/*.md`` and
``django-crossdb/README.md`` whose target is relative must name an existing file; an
``#anchor`` into a Markdown file must name one of its headings (GitHub's slugs).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCUMENTS = [README, ROOT / "django-crossdb" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = {"sh", "console"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
EXIT_CODE = re.compile(r"\bexits? (\d+)\b")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:
README_LIMIT = 250
OWN_PROJECT_LIMIT = 40
TIMEOUT = 300


class Command(NamedTuple):
    env: dict  # NAME=value assignments before the command
    args: list  # the words after ``python manage.py``
    exit_code: int  # 0, or the code the line's comment gives
    line: str  # as written, for messages


def shell_lines(markdown):
    """The logical lines of the ``sh`` and ``console`` blocks, in order: a trailing ``\\``
    joins the next line; in a console block only ``$`` lines are commands (the rest is
    output)."""
    lines = []
    for language, body in FENCE.findall(markdown):
        if language not in RUN_LANGUAGES:
            continue
        pending = ""
        for raw in body.splitlines():
            if language == "console" and not pending:
                if not raw.startswith("$ "):
                    continue
                raw = raw[2:]
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            lines.append((pending + raw).strip())
            pending = ""
        if pending:
            lines.append(pending.strip())
    return [line for line in lines if line]


def manage_command(line):
    """The Command a shell line runs, or None if it does not run ``python manage.py``."""
    words = shlex.split(line, comments=True)
    env = {}
    while words and ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if len(words) < 2 or Path(words[0]).name not in {"python", "python3"}:
        return None
    if words[1] != "manage.py":
        return None
    comment = line.partition(" #")[2]
    found = EXIT_CODE.search(comment)
    return Command(env, words[2:], int(found[1]) if found else 0, line)


def manage_commands(markdown):
    """Every ``python manage.py`` command of the markdown's shell blocks, in order."""
    return [c for c in map(manage_command, shell_lines(markdown)) if c is not None]


def demo_commands():
    """What ``make demo`` runs: the ``$(MANAGE) ...`` lines of the Makefile's demo recipe."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "the Makefile has no demo target"
    return [
        Command({}, shlex.split(line.strip().removeprefix("$(MANAGE)")), 0, line.strip())
        for line in recipe[1].splitlines()
        if line.strip().startswith("$(MANAGE) ")
    ]


def slug(heading):
    """GitHub's anchor for a heading: lower case, code marks and punctuation dropped,
    spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown):
    """The anchors of a Markdown text's headings (a repeated one gets -1, -2, ...)."""
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", markdown), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path):
    """The relative links of the Markdown file at path that lead nowhere, each with why."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    broken = []
    for target in LINK.findall(text):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and destination.suffix == ".md":
            if anchor not in anchors(destination.read_text(encoding="utf-8")):
                broken.append(f"{path.name}: {target} (no such heading)")
    return broken


def environment(data_dir, extra):
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("DATABASE_URL", "DATABASE_REPLICA_URLS"))
    }
    return (
        environ
        | {
            "MULTIDS_DATA_DIR": str(data_dir),
            "DJANGO_SETTINGS_MODULE": "multids.settings",
        }
        | extra
    )


# --- The extractor and the link checker find what they must (each test can fail) ------------


def test_the_extractor_reads_sh_and_console_blocks_only():
    markdown = "\n".join(
        [
            "```sh",
            "make demo   # not a manage.py command",
            "python manage.py migrate_all     # migrates",
            "A=1 B='two words' \\",
            "  python manage.py insert_data --from data/",
            "```",
            "```console",
            "$ python manage.py delete_row users 1   # refused, exit 1: has orders",
            "CommandError: customer 1 has 1 order",
            "```",
            "```text",
            "python manage.py flush   # shown, not run",
            "```",
            "```python",
            "call('python manage.py nothing')",
            "```",
        ]
    )
    assert [(c.env, c.args, c.exit_code) for c in manage_commands(markdown)] == [
        ({}, ["migrate_all"], 0),
        ({"A": "1", "B": "two words"}, ["insert_data", "--from", "data/"], 0),
        ({}, ["delete_row", "users", "1"], 1),
    ]


def test_the_readme_holds_the_first_hour_commands():
    commands = manage_commands(README.read_text(encoding="utf-8"))
    names = [c.args[0] for c in commands]
    assert len(commands) >= 8, [c.line for c in commands]
    for name in ("migrate_all", "insert_data", "createsuperuser", "check_integrity"):
        assert name in names, f"the README runs no {name}: {names}"
    assert ["insert_data", "--from", "rejects.csv"] in [c.args for c in commands]
    assert [c.exit_code for c in commands if c.args[0] == "delete_row"] == [1]


def test_the_link_checker_reports_a_broken_link_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading (here)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md) [anchor](other.md#a-code-heading-here) [self](#page)\n"
        "[web](https://example.com/missing.md) [gone](missing.md) [bad](other.md#nowhere)\n"
        "`[in code](ignored.md)`\n\n```\n[in a block](ignored.md)\n```\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#nowhere (no such heading)",
    ]


# --- The documents ------------------------------------------------------------------------


def test_every_relative_link_of_the_docs_leads_somewhere():
    assert len(DOCUMENTS) > 3
    broken = [problem for path in DOCUMENTS for problem in broken_links(path)]
    assert broken == []


def test_the_readme_stays_short_and_keeps_the_transaction_rule():
    """Issue 32: at most 250 lines, and "Use it in your own project" at most 40. Issue 28:
    the rule for transactions across databases, with the error a user meets."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_LIMIT
    section = re.search(r"^## Use it in your own project\n(.*?)(?=^## )", text, re.M | re.S)
    assert section and len(section[1].splitlines()) <= OWN_PROJECT_LIMIT
    assert "a parent counts once it is committed" in text
    assert re.search(r"^MissingParent: order \d+: .* is not committed yet ", text, re.M)


def test_the_readme_commands_run_as_written(tmp_path):
    data_dir, work = tmp_path / "databases", tmp_path / "work"
    data_dir.mkdir()
    work.mkdir()
    shutil.copytree(ROOT / "core" / "demo_data", work / "data")
    commands = demo_commands() + manage_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10
    for command in commands:
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *command.args],
            capture_output=True,
            text=True,
            env=environment(data_dir, command.env),
            cwd=work,
            timeout=TIMEOUT,
        )
        assert done.returncode == command.exit_code, (
            f"{command.line}\nexited {done.returncode}, the README says {command.exit_code}\n"
            f"{done.stdout}\n{done.stderr}"
        )
