"""Cut named functions and classes out of the demo files, for tutorial.md.

tutorial.md holds no hand-typed demo code: cog runs snippet() for each excerpt,
and tests/test_tutorial.py fails when an excerpt no longer matches its file.
Regenerate after changing a demo: python -m cogapp -r -I tests tutorial.md
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source(path, *names):
    """The exact lines of the named top-level functions/classes (in file order), or
    the whole file when no name is given. "create_app.stream" names a function
    nested in another, e.g. a view inside create_app(). In a .js file, a name is a
    top-level function."""
    text = (ROOT / path).read_text(encoding="utf-8")
    if not names:
        return text.rstrip("\n")
    if path.endswith(".js"):
        return "\n\n".join(_js_function(text, name, path) for name in names)
    lines, tree = text.splitlines(), ast.parse(text)
    chunks = []
    for name in names:
        node = _find(tree, name.split("."), path)
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        chunk = lines[first - 1:node.end_lineno]
        indent = len(chunk[0]) - len(chunk[0].lstrip())
        chunks.append("\n".join(line[indent:] for line in chunk))
    return "\n\n".join(chunks)


def _js_function(text, name, path):
    """A top-level `function name(` (exported or not) of a script, to its closing `}`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith((f"function {name}(", f"export function {name}(")):
            return "\n".join(lines[i:lines.index("}", i) + 1])
    raise LookupError(f"{path} has no top-level function {name!r}")


def _find(tree, parts, path):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == parts[0]:
            return node if len(parts) == 1 else _find(node, parts[1:], path)
    raise LookupError(f"{path} has no function or class {'.'.join(parts)!r}")


def snippet(path, *names):
    """Write a fenced block naming the file, for cog to put into tutorial.md."""
    import cog

    language = {".py": "python", ".js": "js", ".html": "html", ".conf": "nginx"}.get(Path(path).suffix, "")
    cog.outl(f"```{language}")
    comment = "//" if language == "js" else "#"
    if language == "html":
        cog.outl(f"<!-- {path} -->")
    else:
        cog.outl(f"{comment} {path}")
    cog.outl(source(path, *names))
    cog.outl("```")
