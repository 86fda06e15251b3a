"""The documentation: README.md as a short front door, the docs site (MkDocs, docs/) built
strictly, and every shell block of either run here or marked as not runnable with a reason.

The marker convention, an HTML comment on the line right before a ```bash block (invisible
on GitHub and on the built site):
- `<!-- run: tests/test_docs.py -->`: this test runs the block. The runnable blocks of one
  page run in page order, as one user would type them, in one empty folder (with
  `configs/` and `tune_spaces/` of the repository beside them and `.venv/bin` first on the
  PATH), each under `bash -euo pipefail`; every one must exit 0.
- `<!-- not run: REASON -->`: the block is not run, for the reason given (it takes minutes,
  needs a GPU, a cluster, credentials, or a trained model); where a test covers the
  command, the reason names it.
A ```bash block with neither marker, or a command block without a language, fails.
Output is not compared and times are never asserted: machines differ.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 250  # issue 29: the README is the front door, everything else is in docs/

RUN = "<!-- run: tests/test_docs.py -->"
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.+?) -->$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# the first words of a command: an untagged block starting with one should be ```bash
COMMAND_WORDS = ("lightman ", "make ", "python ", "pip ", "ray ", "kubectl ", "curl ", "serve ")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def blocks(path: Path) -> list[tuple[int, str, str | None, str]]:
    """(line number, language, the marker line before the fence or None, the block's text)
    of every fenced block of a Markdown file."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group("lang")
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        marker = lines[start - 1].strip() if start > 0 else None
        found.append((start + 1, lang, marker, "\n".join(lines[start + 1 : j])))
        i = j + 1
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_readme_is_a_front_door_of_at_most_250_lines():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail to docs/ (at most 250)"


def test_the_readme_states_the_two_commands_and_their_budgets():
    text = README.read_text()
    for needed in ("make demo", "make test", "under 20 minutes", "under 10"):
        assert needed in text, f"README.md no longer says {needed!r}"


def test_every_shell_block_is_run_here_or_marked_not_runnable_with_a_reason():
    problems = []
    for path in pages():
        for line, lang, marker, text in blocks(path):
            where = f"{rel(path)}:{line}"
            if lang in SHELL_LANGS:
                if marker == RUN:
                    continue
                m = NOT_RUN.match(marker or "")
                if not m or len(m.group("reason").strip()) < 10:
                    problems.append(f"{where}: put {RUN!r} or '<!-- not run: REASON -->' before it")
            elif not lang and text.lstrip().startswith(COMMAND_WORDS):
                problems.append(f"{where}: a command block without a language; make it ```bash")
    assert not problems, "\n".join(problems)


def runnable_pages() -> list[Path]:
    return [p for p in pages() if any(marker == RUN for _, _, marker, _ in blocks(p))]


@pytest.mark.parametrize("page", runnable_pages(), ids=rel)
def test_the_runnable_blocks_of_a_page_run(page, tmp_path):
    for name in ("configs", "tune_spaces"):
        (tmp_path / name).symlink_to(REPO / name)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for line, lang, marker, text in blocks(page):
        if lang not in SHELL_LANGS or marker != RUN:
            continue
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (
            f"{rel(page)}:{line} exited {done.returncode}:\n{text}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
# a repository path in a code span or a link: it must exist (configs move; docs follow)
REPO_PATH = re.compile(
    r"(?<![\w./-])(?P<path>(?:configs|deploy|docs|benchmarks|tune_spaces|tests|platform|tasks|models)"
    r"/[\w./-]*\.(?:yaml|py|md|sh|png|json))"
)


def test_the_readmes_links_and_named_files_exist():
    """The docs site's own links are checked by mkdocs --strict; the README is outside the
    site, so its relative links, and every repository file README and docs name, are
    checked here."""
    missing = []
    for target in LINK.findall(README.read_text()):
        target = target.split("#")[0]
        if target and "://" not in target and not (REPO / target).exists():
            missing.append(f"README.md links to {target}")
    for path in pages():
        for name in REPO_PATH.findall(path.read_text()):
            if not (REPO / name).exists():
                missing.append(f"{rel(path)} names {name}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_every_docs_page_is_in_the_site_navigation():
    config = (REPO / "mkdocs.yml").read_text()
    absent = [p.name for p in DOCS.glob("*.md") if f" {p.name}" not in config]
    assert not absent, f"pages not in mkdocs.yml's nav: {absent}"


def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (what `make docs` and CI run): a broken link or anchor, a page
    missing from the nav or a nav entry without its page fails. mkdocs comes with the test
    extra (pyproject.toml), so `make test` always runs this."""
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mkdocs is not installed in this environment: pip install -e '.[docs]'")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
