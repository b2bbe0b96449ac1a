"""Every comment that cites the design names a heading that exists in docs/design.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r'design\.md, "([^"]+)"')


def headings() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    return {m.group(1).strip() for m in re.finditer(r"^#{2,4} (.+)$", text, re.MULTILINE)}


def sources() -> list[Path]:
    files = [p for folder in ("bulkgen_cli", "tests", "bench") for p in (ROOT / folder).rglob("*.py")]
    return files + [ROOT / "README.md", ROOT / "docs" / "design.md"]


def test_every_design_citation_names_a_heading():
    known = headings()
    cited = {}
    for path in sources():
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            cited.setdefault(match.group(1), path.relative_to(ROOT))
    assert len(cited) >= 8, cited  # the code does cite it
    missing = {name: str(where) for name, where in cited.items() if name not in known}
    assert not missing, f"cited but not a heading of docs/design.md: {missing}"


def test_no_numbered_citations_are_left():
    """Section numbers drift when a section is added; names do not."""
    old = re.compile(r"design §\d|invariant \d")
    stale = [str(p.relative_to(ROOT)) for p in sources() if p.name != Path(__file__).name
             and old.search(p.read_text(encoding="utf-8"))]
    assert not stale, stale


#: `README, "X"`, `README "X"`, `README, 'X'`, `docs/serving.md, "X"`: a section of the user's docs cited by name.
DOCS_CITATION = re.compile(r"""(README|docs/(\w+)\.md),? (?:"([^"]+)"|'([^']+)')""")


def page_headings(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {m.group(1).strip() for m in re.finditer(r"^#{1,4} (.+)$", text, re.MULTILINE)}


def test_every_docs_citation_names_a_heading():
    """`docs/PAGE.md, "X"` names a heading of that page, `README, "X"` one of the README's own."""
    readme = page_headings(ROOT / "README.md")
    code = sources()[:-2] + list((ROOT / "bulkgen_cli" / "server" / "static").glob("*.js"))
    cited, missing = 0, {}
    for path in code:
        if path.name == Path(__file__).name:
            continue
        for match in DOCS_CITATION.finditer(path.read_text(encoding="utf-8")):
            name = match.group(3) or match.group(4)
            page = ROOT / "docs" / f"{match.group(2)}.md" if match.group(2) else None
            known = readme if page is None else page_headings(page) if page.exists() else set()
            cited += 1
            if name not in known:
                missing[f"{match.group(1)}, {name!r}"] = str(path.relative_to(ROOT))
    assert cited >= 10, cited  # the code does cite the docs
    assert not missing, f"cited but not a heading of the docs: {missing}"
