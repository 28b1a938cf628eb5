"""The README against the code: every command line, flag, name, table entry and link it gives must exist.

The README and the docs/ pages are read as a user reads them; nothing here trains. `tests/test_export.py` also runs
the README's torchvision snippet (the code block after "Loading the torchvision weights:").
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import shlex
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def _text(path: Path = README) -> str:
    return path.read_text()


def _blocks(text: str, lang: str | None = None) -> list[str]:
    """The fenced code blocks of a Markdown text (only those tagged `lang`, when given)."""
    found = re.findall(r"^```([\w-]*)\n(.*?)^```", text, flags=re.M | re.S)
    return [body for tag, body in found if lang is None or tag == lang]


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _section(text: str, heading: str) -> str:
    """From the heading line to the next heading of the same or a higher level (a `# comment` in a code block is none)."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines(keepends=True)
    start = lines.index(heading + "\n") + 1
    fenced = False
    for end in range(start, len(lines)):
        fenced ^= lines[end].startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", lines[end]):
            return "".join(lines[start:end])
    return "".join(lines[start:])


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from gatedssl.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def _torchrun_options() -> set[str]:
    from torch.distributed.run import get_args_parser

    return _options(get_args_parser())


def _command_lines(block: str) -> list[list[str]]:
    """The shell lines of a code block as tokens: continuations joined, comments dropped."""
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _invocations(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """(program, argv) of each gatedssl or torchrun call on a line; `gatedssl` may be `.venv/bin/gatedssl` or `-m gatedssl`."""
    calls, command = [], []
    for token in [*tokens, "&&"]:
        if token in ("&&", "||", ";", "|"):
            if command:
                calls.append(command)
            command = []
        else:
            command.append(token)
    found = []
    for command in calls:
        for i, token in enumerate(command):
            if token == "torchrun":
                end = command.index("-m") if "-m" in command else len(command)
                found.append(("torchrun", command[i + 1 : end]))
            if Path(token).name == "gatedssl" and (i == 0 or command[i - 1] in ("-m", "srun", "torchrun") or "/" in token):
                found.append(("gatedssl", command[i + 1 :]))
    return found


def _readme_calls(program: str) -> list[list[str]]:
    """The argv of every `program` call in the README's bash blocks."""
    lines = [line for block in _blocks(_text(), "bash") for line in _command_lines(block)]
    return [argv for line in lines for prog, argv in _invocations(line) if prog == program]


# --- the one install-and-run command and the one test command ---------------------------------------------------------------


def test_the_install_and_test_commands_are_the_ones_ci_runs():
    blocks = _blocks(_section(_text(), "## Install and run the demo"), "bash")
    assert blocks[0].strip() == 'python3 -m venv .venv && .venv/bin/pip install -e ".[test,export]" && .venv/bin/gatedssl pretrain'
    assert _blocks(_section(_text(), "## Run the tests"), "bash")[0].strip() == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test,export]"' in ci  # the extras the README's command installs
    assert re.search(r"^\.venv/bin/python -m pytest", ci, flags=re.M)


# --- command lines and flags ------------------------------------------------------------------------------------------


def test_every_gatedssl_command_line_in_a_code_block_parses():
    """Each `gatedssl SUB ...` line parses with the real parser, and each --flag is that subcommand's own (no abbreviation)."""
    from gatedssl.cli import build_parser
    from gatedssl.errors import UserError

    subs = _subparsers()
    calls = _readme_calls("gatedssl")
    assert {argv[0] for argv in calls} == set(subs), "the README shows every subcommand at least once"
    for argv in calls:
        flags = [t.split("=")[0] for t in argv if t.startswith("--")]
        unknown = [f for f in flags if f not in _options(subs[argv[0]])]
        assert not unknown, f"gatedssl {argv[0]} has no {unknown} ({' '.join(argv)})"
        try:
            build_parser().parse_args(argv)
        except (SystemExit, UserError) as e:
            pytest.fail(f"`gatedssl {' '.join(argv)}` does not parse: {e}")


def test_every_torchrun_flag_in_a_code_block_is_torchruns():
    torchrun = _torchrun_options()
    calls = _readme_calls("torchrun")
    assert calls
    for argv in calls:
        assert not [t for t in argv if t.startswith("--") and t.split("=")[0] not in torchrun], argv


def test_every_flag_in_the_text_exists():
    """A --flag in the prose (tables included) is a gatedssl subcommand's, or torchrun's where the text says torchrun.
    An inline `gatedssl SUB ...` span is checked against SUB."""
    subs = _subparsers()
    every = set().union(*map(_options, subs.values()))
    torchrun = _torchrun_options()
    prose = _prose(_text())
    for span in re.findall(r"`([^`\n]+)`", prose):
        words = span.split()
        if len(words) > 1 and words[0] == "gatedssl" and words[1] in subs:
            wrong = [f for f in FLAG.findall(span) if f not in _options(subs[words[1]])]
            assert not wrong, f"gatedssl {words[1]} has no {wrong} (`{span}`)"
    for flag in set(FLAG.findall(prose)):
        assert flag in every or flag in torchrun, f"{flag} is no gatedssl flag"


def test_the_modes_methods_and_datasets_tables_list_the_registries():
    """A table whose first header cell is a `--flag` lists that flag's values, all of them and nothing else."""
    pretrain = _subparsers()["pretrain"]
    choices = {o: a.choices for a in pretrain._actions for o in a.option_strings if a.choices}
    tables = re.findall(r"^\| `(--[a-z-]+)` \|.*\n\|[-| ]+\|\n((?:\|.*\n)+)", _text(), flags=re.M)
    seen = {flag for flag, _ in tables}
    assert {"--mode", "--method", "--dataset"} <= seen
    for flag, rows in tables:
        listed = {name for row in rows.splitlines() for name in re.findall(r"`([^`]+)`", row.split("|")[1])}
        assert listed == set(choices[flag]), f"the {flag} table lists {sorted(listed)}, the code {sorted(choices[flag])}"


def test_every_list_of_a_flags_values_is_complete():
    """A paragraph that lists a flag's values ("Modes (`--mode`): `dual` ..., ...") names every one of them."""
    pretrain = _subparsers()["pretrain"]
    choices = {o: a.choices for a in pretrain._actions for o in a.option_strings if a.choices}
    for paragraph in re.split(r"\n\s*\n", _prose(_text())):
        for flag in re.findall(r"\(`(--[a-z-]+)`\):", paragraph):
            named = set(re.findall(r"`([\w.-]+)`", paragraph))
            assert set(choices[flag]) <= named, f"the list of {flag}'s values leaves out {sorted(set(choices[flag]) - named)}"


def test_the_tables_match_the_code_registries():
    from gatedssl.config import DATASETS
    from gatedssl.methods import METHODS, MODES

    assert set(MODES) == {"dual", "dense", "gated", "slimmable", "posthoc"}  # what the modes table is checked against
    pretrain = _subparsers()["pretrain"]
    choices = {o: set(a.choices) for a in pretrain._actions for o in a.option_strings if a.choices}
    assert choices["--mode"] == set(MODES) and choices["--method"] == set(METHODS) and choices["--dataset"] == set(DATASETS)


def test_the_recipe_table_is_the_recipes():
    """Its columns are RECIPES' names; each row's flag exists; where a recipe sets the setting, the cell says its value."""
    from gatedssl.config import RECIPES

    text = _section(_text(), "### Settings and recipes")
    header = next(line for line in text.splitlines() if line.startswith("| setting |"))
    assert re.findall(r"`(\w+)`", header) == list(RECIPES)
    pretrain = _options(_subparsers()["pretrain"])
    rows = [line for line in text.splitlines() if line.startswith("| `--")]
    words = {True: "yes", False: "no"}
    covered = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        flag = re.match(r"`(--[a-z-]+)`", cells[0]).group(1)
        assert flag in pretrain, flag
        key = flag[2:].replace("-", "_")
        for name, cell in zip(RECIPES, cells[1:3]):
            if key in RECIPES[name]:
                value = RECIPES[name][key]
                assert cell in (f"`{value}`", words.get(value)), f"{flag} under {name}: README {cell}, code {value!r}"
                covered.add(key)
    assert covered == set().union(*RECIPES.values()), "every setting a recipe sets has its row"


def test_the_shipped_configs_are_the_ones_named():
    from gatedssl.config import SHIPPED_CONFIGS

    shipped = {p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")}
    for mention in re.findall(r"shipped config \(([^)]*)\)", _text()):
        assert set(re.findall(r"\w+", mention)) == shipped, mention


# --- modules and names ------------------------------------------------------------------------------------------------


def _resolve(dotted: str):
    """The object a dotted `gatedssl.x.y` name names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_gatedssl_name_in_the_readme_exists():
    for dotted in sorted(set(re.findall(r"\bgatedssl(?:\.[A-Za-z_]\w*)+", _text()))):
        try:
            _resolve(dotted)
        except (AttributeError, ModuleNotFoundError) as e:
            pytest.fail(f"the README names {dotted}, which does not exist: {e}")


def test_every_python_block_compiles_and_its_imports_resolve():
    for block in _blocks(_text(), "python"):
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gatedssl"):
                module = importlib.import_module(node.module)
                assert not [a.name for a in node.names if not hasattr(module, a.name)], ast.unparse(node)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


def _api_example() -> dict:
    """The Python API section's example, run: its numbers must be what the code gives."""
    example = _blocks(_section(_text(), "### Python API"), "python")[0]
    namespace: dict = {}
    exec(example, namespace)
    return namespace


def test_the_python_api_example_runs_and_its_comments_hold():
    ns = _api_example()
    out = ns["out"]
    assert tuple(out.features.shape) == (8, 512) and len(out.masks) == 8 and tuple(out.macs.shape) == (8,)
    assert int(out.dense_macs) == 555_417_600  # "555,417,600 for ResNet-18 at 32x32"


def _call_arguments(span: str) -> list[tuple[str, bool]] | None:
    """The argument names written in `name(a, b=1, ...)`, top level only, each with whether it is given by keyword."""
    match = re.match(r"[\w.]+\((.*)\)", span)
    if not match:
        return None
    args, depth, current = [], 0, ""
    for ch in match.group(1) + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += ch
    names = []
    for arg in args:
        m = re.fullmatch(r"([A-Za-z_]\w*)\s*(=.*)?", arg)
        if m:
            names.append((m.group(1), m.group(2) is not None))
    return names


def _check_arguments(obj, span: str) -> None:
    names = _call_arguments(span)
    if not names:
        return
    if hasattr(obj, "forward") and not inspect.isclass(obj):
        obj = obj.forward  # a module instance: what calling it runs
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    any_keyword = any(p.kind == p.VAR_KEYWORD for p in params.values())
    missing = [n for n, by_keyword in names if n not in named and not (by_keyword and any_keyword)]
    assert not missing, f"`{span}`: {getattr(obj, '__qualname__', type(obj).__name__)} takes no {missing} (it takes {list(params)})"


def _api_entries() -> list[str]:
    """The Python API section's bullets, each joined into one line."""
    text = _section(_text(), "### Python API")
    bullets = re.findall(r"^- (.*(?:\n  .*)*)", text, flags=re.M)
    return [" ".join(line.strip() for line in b.splitlines()) for b in bullets]


def test_every_name_the_python_api_lists_is_in_its_module():
    """Each entry starts with `gatedssl.module`; every name after it is in that module (in `__all__` where the module
    has one: what `from module import *` gives), and every argument name written in a call is the function's.
    `net(...)` and `out.x` refer to the example above; `gatedssl.x` spans name themselves; a span naming a module
    makes it the one the following names are checked against."""
    example = _api_example()
    entries = _api_entries()
    assert entries
    for entry in entries:
        spans = re.findall(r"`([^`]+)`", entry)
        assert spans and isinstance(_resolve(spans[0].split("(")[0]), types.ModuleType), f"an entry starts with its module: {entry}"
        module = None
        for span in spans:
            head = re.match(r"[A-Za-z_][\w.]*", span)
            if not head or span[head.end() : head.end() + 1] == "=":
                continue  # a value, a keyword argument, a flag
            dotted = head.group(0).rstrip(".")
            first, *rest = dotted.split(".")
            if first == "gatedssl":
                obj = _resolve(dotted)
                if isinstance(obj, types.ModuleType):
                    module = obj
            elif first in example:
                obj = example[first]
                for part in rest:
                    obj = getattr(obj, part)
            else:
                exported = getattr(module, "__all__", None)
                assert first in (exported if exported is not None else dir(module)), f"{module.__name__} does not export {first}"
                obj = getattr(module, first)
                for part in rest:
                    assert hasattr(obj, part), f"{module.__name__}.{first} has no {part}"
                    obj = getattr(obj, part)
            if callable(obj):
                _check_arguments(obj, span)


def test_gatedssl_data_exports_what_the_readme_says():
    """The issue's example: the README listed augmentation helpers as gatedssl.data's, which exports none."""
    import gatedssl.data

    entry = next(e for e in _api_entries() if e.startswith("`gatedssl.data`:"))
    named = {re.match(r"\w+", s).group(0) for s in re.findall(r"`([A-Za-z_]\w*)[^`]*`", entry) if not s.startswith("gatedssl")}
    assert named
    assert named <= set(gatedssl.data.__all__), named - set(gatedssl.data.__all__)


def test_every_script_the_readme_names_exists():
    for path in set(re.findall(r"\b((?:benchmarks|scripts|\.ci)/[\w./-]+\w)", _text())):
        assert (ROOT / path).exists(), path


# --- links and what is written for whom --------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", _prose(path.read_text()), flags=re.M)}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name} links to {target}: no such file"
        if anchor:
            assert anchor in _anchors(path), f"{page.name} links to {target}: no such heading"


def test_the_readme_links_every_docs_page_and_the_benchmarks():
    links = set(re.findall(r"\]\(([^)#\s]+)", _text()))
    assert DOCS and {f"docs/{p.name}" for p in DOCS} <= links
    assert "BENCHMARKS.md" in links


def test_the_design_layout_names_files_that_exist():
    layout = _blocks(_section((ROOT / "docs" / "DESIGN.md").read_text(), "## Layout"))[0]
    stack: list[tuple[int, str]] = []
    for line in layout.splitlines():
        match = re.match(r"( *)(\S+)", line)
        name = match.group(2)
        if not re.fullmatch(r"[\w./]+", name) or (not name.endswith("/") and "." not in name):
            continue  # a description's continuation line
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(p for _, p in stack) + name
        module_or_package = path.endswith(".py") and (ROOT / path[:-3] / "__init__.py").exists()
        assert (ROOT / path).exists() or module_or_package, f"docs/DESIGN.md lists {path}, which does not exist"
        if name.endswith("/"):
            stack.append((indent, name))


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_sentence_is_written_for_the_authors(page):
    """Readers cannot see the project's issues or its machine loans."""
    text = page.read_text()
    for pattern in (r"\bissue \d+", r"\bissue's\b", r"GPU day", r"\blent\b", r"\bthis session\b"):
        assert not re.search(pattern, text, flags=re.I), f"{page.name}: {re.search(pattern, text, flags=re.I).group(0)!r}"
