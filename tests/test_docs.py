"""The documentation tells the truth: the YAML reference is generated from the model, and its examples load."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import shutil
from pathlib import Path
from types import ModuleType

import click
import pytest
import yaml

from amqptasks.config import check_file, check_text
from tests.cli_helpers import run

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
_YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)


def load_generator(name: str = "gen_reference") -> ModuleType:
    """One of the docs generators (docs/gen_reference.py, docs/gen_cli.py), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def yaml_blocks() -> list[tuple[str, str]]:
    """(``page.md:line``, text) of every YAML code block in docs/*.md."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _YAML_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # the block's first line, after the fence
            blocks.append((f"{page.name}:{line}", match.group(1)))
    return blocks


def quickstart() -> str:
    return (DOCS / "quickstart.md").read_text(encoding="utf-8")


VALIDATED = [(where, text) for where, text in yaml_blocks() if re.match(r"# (validate\b|file: )", text)]


def test_yaml_reference_is_generated_from_the_current_model() -> None:
    generator = load_generator()

    expected = generator.render()

    actual = (DOCS / "yaml-reference.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/yaml-reference.md is stale: run python docs/gen_reference.py"


def test_generator_check_mode_fails_on_a_stale_file_and_passes_once_rewritten(tmp_path: Path) -> None:
    generator = load_generator()
    target = tmp_path / "yaml-reference.md"
    target.write_text("stale\n", encoding="utf-8")

    stale = generator.main(["--check", "-o", str(target)])
    generator.main(["-o", str(target)])
    fresh = generator.main(["--check", "-o", str(target)])

    assert (stale, fresh) == (1, 0)


def test_reference_documents_every_queue_key() -> None:
    text = (DOCS / "yaml-reference.md").read_text(encoding="utf-8")

    for key in ("max_priority", "message_ttl", "delivery_limit", "dead_letter", "alternate_exchange", "to_exchange"):
        assert f"| `{key}` |" in text


def test_docs_have_validated_yaml_examples() -> None:
    pages = {where.split(":")[0] for where, _ in VALIDATED}

    assert {"quickstart.md", "yaml-reference.md"} <= pages


@pytest.mark.parametrize(("where", "text"), yaml_blocks(), ids=[where for where, _ in yaml_blocks()])
def test_every_yaml_example_is_well_formed_yaml(where: str, text: str) -> None:
    yaml.safe_load(text)


@pytest.mark.parametrize(("where", "text"), VALIDATED, ids=[where for where, _ in VALIDATED])
def test_yaml_example_marked_validate_loads_without_errors_or_warnings(where: str, text: str) -> None:
    config, diags = check_text(text, where, env={})

    assert [str(d) for d in diags.items] == []
    assert config is not None


@pytest.mark.parametrize("page", ["docs/quickstart.md", "README.md"])
def test_documented_validation_error_is_what_validate_reports(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given config/app.yaml with the typo the page shows, at the line it names
    documented = re.search(
        r"^(config/app\.yaml:(\d+):\d+: queue 'billing': unknown key 'max_prority'.*)$",
        (ROOT / page).read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert documented is not None
    shutil.copytree(ROOT / "config", tmp_path / "config")
    app = tmp_path / "config" / "app.yaml"
    lines = app.read_text(encoding="utf-8").splitlines(keepends=True)
    line = int(documented.group(2))
    assert "max_priority:" in lines[line - 1], f"the quickstart's typo example names config/app.yaml:{line}"
    lines[line - 1] = lines[line - 1].replace("max_priority:", "max_prority:")
    app.write_text("".join(lines), encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    # When it is validated
    _, diags = check_file("config/app.yaml", env={})

    # Then the error is the one documented, word for word
    assert [str(d) for d in diags.errors] == [documented.group(1)]


@pytest.mark.parametrize("page", ["docs/quickstart.md", "README.md"])
def test_documented_conflict_example_points_at_billings_max_priority(page: str) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    documented = re.findall(r"x-max-priority is 5 on the broker, 10 in config/app\.yaml:(\d+)", text)
    config, _ = check_file(ROOT / "config" / "app.yaml", env={})
    assert config is not None
    billing = next(q for q in config.topology.queues if q.name == "billing")

    assert documented
    assert {int(line) for line in documented} == {billing.where("max_priority").line}
    assert billing.max_priority == 10


# --- the command reference (docs/cli/, generated from the click definitions) and the site ---------------------


def load_cli_generator() -> ModuleType:
    return load_generator("gen_cli")


def test_cli_pages_are_generated_from_the_current_commands() -> None:
    generator = load_cli_generator()

    assert generator.main(["--check"]) == 0, "docs/cli/ is stale: run python docs/gen_cli.py"


def test_cli_generator_check_mode_fails_on_a_stale_missing_or_left_over_page(tmp_path: Path) -> None:
    generator = load_cli_generator()
    generator.main(["-o", str(tmp_path)])
    fresh = generator.main(["--check", "-o", str(tmp_path)])
    (tmp_path / "worker.md").write_text("stale\n", encoding="utf-8")
    stale = generator.main(["--check", "-o", str(tmp_path)])
    generator.main(["-o", str(tmp_path)])
    (tmp_path / "gone.md").write_text("a command that no longer exists\n", encoding="utf-8")
    left_over = generator.main(["--check", "-o", str(tmp_path)])

    assert (fresh, stale, left_over) == (0, 1, 1)


def test_every_command_has_a_page_with_its_options() -> None:
    worker = (DOCS / "cli" / "worker.md").read_text(encoding="utf-8")
    dlq = (DOCS / "cli" / "dlq.md").read_text(encoding="utf-8")

    assert "| <code>-Q, --queues TEXT</code> | Comma-separated queues to consume. |" in worker
    assert "## amqptasks dlq replay" in dlq and "<code>--keep-retries</code>" in dlq


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


def test_the_site_navigation_lists_every_page_once() -> None:
    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))

    assert sorted(nav) == pages, "add the page to mkdocs.yml's nav (python docs/gen_cli.py writes docs/cli/)"


@pytest.mark.parametrize(
    ("shell", "marker"), [("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete --no-files --command")]
)
def test_the_documented_shell_completion_lines_work(shell: str, marker: str, tmp_path: Path) -> None:
    documented = (DOCS / "cli" / "index.md").read_text(encoding="utf-8")
    assert f"_AMQPTASKS_COMPLETE={shell}_source amqptasks" in documented

    result = run([], cwd=tmp_path, env={"_AMQPTASKS_COMPLETE": f"{shell}_source"})

    assert result.code == 0, str(result)
    assert marker in result.stdout and "amqptasks" in result.stdout


def test_no_page_holds_a_merge_conflict_marker() -> None:
    marked = [
        f"{page.relative_to(ROOT)}:{number}"
        for page in [*DOCS.rglob("*.md"), ROOT / "README.md"]
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "======="
    ]

    assert marked == []


_PYTHON_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, str]]:
    """(``page:line``, code) of every Python block of the docs and the README (indented ones dedented)."""
    blocks = []
    for page in [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]:
        text = page.read_text(encoding="utf-8")
        for match in _PYTHON_BLOCK.finditer(text):
            indent = len(match.group(1))
            code = "\n".join(line[indent:] for line in match.group(2).splitlines())
            blocks.append((f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 2}", code))
    return blocks


@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=[where for where, _ in python_blocks()])
def test_every_python_example_is_valid_python(where: str, code: str) -> None:
    # The fragments use names defined elsewhere on their page and `await` at top level, as a REPL would: they
    # must at least be Python that compiles (the quickstart and the canvas session also run, in other tests).
    compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


# --- every `amqptasks ...` command the docs show exists, with options it has ---------------------------------

_COMMAND_LINE = re.compile(r"^\s*(?:\$ |    )(?:\w+=\S+ )*amqptasks ((?:[a-z]).*)$", re.MULTILINE)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(``page:line``, arguments) of each ``$ amqptasks ...`` line in the docs, READMEs and examples."""
    pages = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md", *sorted(ROOT.glob("*/README.md"))]
    pages += sorted((ROOT / "examples").rglob("README.md"))
    found = []
    for page in dict.fromkeys(pages):
        text = page.read_text(encoding="utf-8")
        for match in _COMMAND_LINE.finditer(text):
            line = re.split(r"\s+#|\s\||\s&&|\s>", match.group(1))[0]
            try:
                args = shlex.split(line)
            except ValueError:
                continue
            where = f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
            found.append((where, args))
    return found


def test_the_docs_show_commands() -> None:
    assert len(documented_commands()) >= 30


@pytest.mark.parametrize(("where", "args"), documented_commands(), ids=[w for w, _ in documented_commands()])
def test_every_documented_command_and_option_exists(where: str, args: list[str]) -> None:
    from amqptasks.cli import cli

    command: click.Command = cli
    ctx = click.Context(cli, info_name="amqptasks")
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        # a synopsis may list alternatives: `inspect ping|registered|stats`
        subs = [command.get_command(ctx, name) for name in rest[0].split("|")]
        assert all(subs), f"{where}: 'amqptasks {' '.join(args)}': no command {rest[0]!r}"
        command, rest = subs[0], rest[1:]  # type: ignore[assignment]
        ctx = click.Context(command, info_name=command.name, parent=ctx)
    known = {opt for p in command.get_params(ctx) for opt in (*p.opts, *p.secondary_opts)}
    for token in rest:
        name = token.strip("[]").split("=", 1)[0]
        if name.startswith("-") and name not in ("-", "--"):
            assert name in known, f"{where}: {ctx.command_path} has no option {name} (it has {sorted(known)})"


def test_the_home_page_links_every_guide_and_reference_page() -> None:
    home = (DOCS / "index.md").read_text(encoding="utf-8")
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")]

    unlinked = [p for p in pages if p != "index.md" and not p.startswith("cli/") and f"]({p})" not in home]
    assert unlinked == [], "link these pages from docs/index.md"
