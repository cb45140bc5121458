"""The project's text refers only to files inside the repository: README, docs, the package, scripts, tests, examples,
the Makefile and pyproject name no path outside it. A reader (or a test) who has only this repository must be able to
follow every reference; a machine's own folders (/work/..., /tmp/...) and files kept beside the repository mean
nothing elsewhere. What the design or a fault table says belongs in docs/ (docs/ARCHITECTURE.md, docs/reliability.md)
or in the test itself.

Flagged, with the file and line:
- a ../ path that, taken from the file's own folder, leaves the repository;
- names of documents kept outside the repository (the design notes, the environment notes, the fault battery's
  table) and a `shared/` folder;
- absolute paths under /work/ or /tmp/ (use a path relative to the repository, tmp_path in tests, or the tempfile
  module in code).
Placeholder model folders such as /models/sd15 in docs are not paths of this machine and are allowed.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = {".py", ".md", ".txt", ".json", ".yaml", ".yml", ".toml", ".cfg", ".sh", ".jsonl", ".csv", ".html", ".ini"}

OUTSIDE_DOCS = re.compile(r"\b(DESIGN\.md|ENVIRONMENT\.md|battery\.md)\b|(?<![\w.-])shared/[\w.-]+")
ABSOLUTE = re.compile(r"(?<![\w.~-])/(work|tmp)/[\w.{}$-]+")
UP = re.compile(r"(?<![\w.-])((?:\.\./)+)([\w.-]*)")


def scanned_files():
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("docs", "poegen", "scripts", "tests", "examples"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in TEXT
                  and "__pycache__" not in p.parts and ".egg-info" not in str(p)]
    return [f for f in files if f.exists()]


def outside_references(path: Path, text: str):
    """(line number, what, why) of every reference in ``text`` (the file ``path``) to a path outside the repository."""
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in OUTSIDE_DOCS.finditer(line):
            found.append((n, m.group(0), "a document kept outside the repository"))
        for m in ABSOLUTE.finditer(line):
            found.append((n, m.group(0), "an absolute path of one machine"))
        for m in UP.finditer(line):
            target = (path.parent / m.group(1)).resolve()
            if target != ROOT and ROOT not in target.parents:
                found.append((n, m.group(0), "a ../ path that leaves the repository"))
    return found


def test_nothing_refers_to_a_path_outside_the_repository():
    this = Path(__file__).resolve()
    problems = []
    for path in scanned_files():
        if path.resolve() == this:  # this file names what it looks for
            continue
        text = path.read_text(errors="replace")
        for n, what, why in outside_references(path, text):
            problems.append(f"{path.relative_to(ROOT)}:{n}: {what!r}: {why}")
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


def test_the_check_sees_what_it_must_and_leaves_the_rest(tmp_path):
    """The detector itself: outside references are caught, in-repository ones and test data are not."""
    readme, test = ROOT / "README.md", ROOT / "tests" / "test_x.py"
    bad = {
        "the design is in ../shared/DESIGN.md": readme,
        "see DESIGN.md": test,
        "(ENVIRONMENT.md, measured)": test,
        "the table in battery.md": test,
        "rows from shared/notes.txt": test,
        "python scripts/x.py --out /tmp/samples.png": readme,
        "the fault battery (/work/something/table.md)": test,
        "a link [up](../../elsewhere.md)": ROOT / "docs" / "page.md",
    }
    for text, path in bad.items():
        assert outside_references(path, text), text
    good = {
        "see [the design](docs/ARCHITECTURE.md) and [up](../README.md)": ROOT / "docs" / "page.md",
        "an id '../escape' is refused": ROOT / "tests" / "test_x.py",  # test data, resolves inside the repository
        "--expert sd:/models/sd15": readme,
        "experts that share a backbone; shared weights": readme,
        "x = x0 + sigma * eps, p / q": readme,
    }
    for text, path in good.items():
        assert not outside_references(path, text), text
