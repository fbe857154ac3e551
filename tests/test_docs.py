"""The documentation and the code agree: every deviation the README (or a docs page) lists names a place in
the code that carries a `Note:`, every `Note:` in the code is listed, and the README stays a few screens."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACE = re.compile(r"`(\w+\.py):([\w.]+)`")  # `file.py:function` or `file.py:Class.method`


def places(tree: ast.Module) -> dict[str, tuple[int, int]]:
    """qualified name -> (first line, last line) of every function and class."""
    out = {}

    def visit(node, prefix=""):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                name = prefix + child.name
                out[name] = (child.lineno, child.end_lineno)
                visit(child, name + ".")

    visit(tree)
    return out


def notes() -> set[tuple[str, str]]:
    """(file, innermost function or class) of every `Note:` in the project's modules."""
    found = set()
    for path in sorted(ROOT.glob("*.py")):
        if path.name.startswith("test_") or path.name == "conftest.py":
            continue
        lines = path.read_text().splitlines()
        spans = places(ast.parse("\n".join(lines)))
        for number, line in enumerate(lines, 1):
            if "Note:" in line:
                inside = [(first, name) for name, (first, last) in spans.items() if first <= number <= last]
                assert inside, f"{path.name}:{number}: a Note: outside any function or class"
                found.add((path.name, max(inside)[1]))
    return found


def test_every_listed_deviation_has_a_note_and_every_note_is_listed():
    listed = {m.groups() for doc in DOCS for m in PLACE.finditer(doc.read_text())}
    in_code = notes()
    assert listed - in_code == set(), "listed in the docs, but no Note: there"
    assert in_code - listed == set(), "a Note: in the code that no README or docs list names"


def test_the_readme_is_a_few_screens_and_its_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert link.startswith("http") or (ROOT / link).exists(), link
