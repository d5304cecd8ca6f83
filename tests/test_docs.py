"""Every code block of README.md, CONTRIBUTING.md and docs/*.md, run as a reader would run it, against a real
``gradwire serve``: the documentation cannot drift from the code unnoticed.

Fenced blocks tagged ``python``, ``sh``, ``bash`` or ``shell`` are collected from each document,
one test each, named ``FILE:LINE`` (the line of the opening fence). The blocks of one document run
in order, as a reader pastes them: its Python blocks share one namespace and run in this process,
compiled at their markdown lines (a traceback shows the markdown); its shell blocks run with
``bash -euo pipefail``, each block's variables (``MODEL_ID=$(...)``) kept for the next, and a
failure names the markdown line and the command. Each document has a working folder of its own,
holding links to the repository's top-level entries, so ``docs/examples/...`` resolves as in a
clone and what the examples write stays out of the tree. The venv's ``bin`` is first on PATH,
``GRADWIRE_SERVER`` names the server this module starts (SQLite, no auth: what ``make run``
does), and ``GRADWIRE_HTTP`` its HTTP port.
A block selected alone (``-k README.md:185``) first runs the blocks before it in its document.

Untagged blocks and those tagged ``text``, ``proto``, ... are output, listings or diagrams, never
run. A block that cannot run here says why in the markdown, on the line before its fence, and is
skipped with that reason (``-rs`` lists them):

    <!-- not run: needs Docker -->      always skipped
    <!-- needs: grpcurl jq -->          skipped where one of these commands is not on PATH
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest
from helpers import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # the venv's bin: sys.executable unresolved is the venv's link
KINDS = {"python": "python", "sh": "shell", "bash": "shell", "shell": "shell"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<tag>[^\s`]*)")
MARK = re.compile(r"^\s*<!--\s*(?P<kind>not run|needs):\s*(?P<what>.+?)\s*-->\s*$")
SHELL_SECONDS = 180  # one shell block, start to end; then its process group is killed
TEST_SECONDS = 600  # one test, the earlier blocks it may run included (pytest-timeout)


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its tag, its code, and its mark (``("not run", why)`` or
    ``("needs", "command command")``), if any."""

    path: Path
    line: int  # the opening fence's, from 1
    tag: str
    code: str
    mark: tuple[str, str] | None = None

    @property
    def document(self) -> str:
        return str(self.path.relative_to(ROOT))

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def kind(self) -> str | None:
        """``python``, ``shell``, or None for a block that is never run."""
        return KINDS.get(self.tag.lower())

    def skip_reason(self) -> str | None:
        if self.mark is None:
            return None
        kind, what = self.mark
        if kind == "not run":
            return f"{self.name}: {what}"
        missing = [command for command in what.split() if shutil.which(command) is None]
        return f"{self.name}: needs {', '.join(missing)} (not on PATH)" if missing else None


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, in order, each with the mark on the line before it."""
    lines = path.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((i for i in range(index + 1, len(lines)) if closing.match(lines[i])), len(lines))
        code = "".join(line[indent:] + "\n" for line in lines[index + 1 : end])
        mark = MARK.match(lines[index - 1]) if index else None
        found.append(
            Block(path, index + 1, opening["tag"], code, mark.group("kind", "what") if mark else None)
        )
        index = end + 1
    return found


RUN = [block for path in DOCUMENTS for block in fenced_blocks(path) if block.kind]


# ------------------------------------------------------------------------------- the reader


@dataclass
class Reader:
    """One document's reader: its working folder, environment, Python namespace and shell
    variables, and how far through the document it has got."""

    path: Path
    folder: Path
    env: dict[str, str]
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__main__"})
    failed: dict[int, bool] = field(default_factory=dict)  # the blocks run so far, by line
    printed: dict[int, str] = field(default_factory=dict)  # what each printed, by line

    def run(self, block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
        """Runs ``block``, after the runnable blocks before it that have not run (when it was
        selected alone); one that failed before skips it, naming the block it follows."""
        for earlier in (b for b in RUN if b.path == block.path and b.line < block.line):
            if self.failed.get(earlier.line):
                pytest.skip(f"{block.name}: it follows {earlier.name}, which failed")
            if earlier.line not in self.failed and earlier.skip_reason() is None:
                try:
                    self.run_one(earlier, monkeypatch)
                except (Exception, pytest.fail.Exception) as exc:
                    pytest.fail(f"{earlier.name}, run before {block.name}, failed: {exc}")
        self.run_one(block, monkeypatch)

    def run_one(self, block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failed[block.line] = True
        if block.kind == "python":
            self.run_python(block, monkeypatch)
        else:
            self.run_shell(block)
        self.failed[block.line] = False

    def run_python(self, block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
        """In this process, in the document's namespace, folder and environment; compiled at the
        block's lines of the markdown, so that a traceback shows them."""
        for name in [name for name in os.environ if name.startswith("GRADWIRE_")]:
            monkeypatch.delenv(name)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(self.folder)
        code = compile("\n" * block.line + block.code, str(block.path), "exec")
        with contextlib.redirect_stdout(Tee(sys.stdout)) as printed:
            exec(code, self.namespace)
        self.printed[block.line] = printed.getvalue()

    def run_shell(self, block: Block) -> None:
        """``bash -euo pipefail`` in the document's folder, in a process group of its own, killed
        whole when the block ends (what it left in the background) or runs out of time."""
        state = self.folder.parent / "shell-variables.sh"
        argv = ["bash", "-euo", "pipefail", "-c", SHELL_PROLOGUE.format(state=shlex.quote(str(state)))]
        argv[-1] += block.code
        process = subprocess.Popen(
            argv,
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=SHELL_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0] + f"\n(killed: still running after {SHELL_SECONDS} s)"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        offset = block.line - SHELL_PROLOGUE.count("\n")  # bash's line numbers, as the markdown's
        output = re.sub(
            r"^bash: line (\d+):", lambda m: f"{block.document}:{int(m[1]) + offset}:", output, flags=re.M
        )
        print(output)
        self.printed[block.line] = output
        assert process.returncode == 0, (
            f"{block.name} exited {process.returncode}:\n{textwrap.indent(output[-4000:], '    ')}"
        )


SHELL_PROLOGUE = """\
__gw_before=" $(compgen -v | tr '\\n' ' ') "
__gw_save() {{
  for __gw_v in $(compgen -v); do
    case "$__gw_before" in
      *" $__gw_v "*) ;;
      *) [[ $__gw_v == @(__gw*|BASH*|PIPESTATUS|FUNCNAME) ]] || declare -p "$__gw_v" ;;
    esac
  done > {state}
}}
trap __gw_save EXIT
if [[ -f {state} ]]; then source {state}; fi
trap 'echo "bash: line $LINENO: exit $?: $BASH_COMMAND" >&2' ERR
"""
"""Before each shell block: the variables the document's earlier blocks set; at its exit, saving
the ones it set itself (not those of the environment it was given); at a failure, the line and the
command (``bash: line N:``, rewritten as the markdown's line like bash's own messages)."""


class Tee(io.StringIO):
    """Keeps what a Python block prints, and passes it on (pytest shows it when the block fails)."""

    def __init__(self, passed_to: TextIO) -> None:
        super().__init__()
        self.passed_to = passed_to

    def write(self, text: str) -> int:
        self.passed_to.write(text)
        return super().write(text)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``gradwire serve`` as ``make run`` starts it (no auth), on free ports of loopback."""
    folder = tmp_path_factory.mktemp("server")
    with ServerProcess(f"sqlite:///{folder / 'db.sqlite'}") as process:
        yield process
        assert process.terminate() == 0


@pytest.fixture(scope="module")
def readers(
    server: ServerProcess, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[Path, Reader]:
    """A reader per document, each in a folder of links to the repository's top-level entries;
    says on the terminal how many blocks of each document run and how many are skipped."""
    plugins = request.config.pluginmanager
    terminal, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if terminal is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            terminal.write_line("")
            for path in DOCUMENTS:
                blocks = [block for block in RUN if block.path == path]
                skipped = sum(block.skip_reason() is not None for block in blocks)
                name = path.relative_to(ROOT)
                terminal.write_line(f"{name}: code blocks to run {len(blocks) - skipped}, skipped {skipped}")
    env = {name: value for name, value in os.environ.items() if not name.startswith("GRADWIRE_")}
    env |= {"GRADWIRE_SERVER": server.address, "GRADWIRE_HTTP": server.http_url}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    made = {}
    for path in DOCUMENTS:
        folder = tmp_path_factory.mktemp(path.stem) / "work"
        folder.mkdir()
        for entry in ROOT.iterdir():  # not .git, caches, nor ./data (make run's database)
            if entry.name != "data" and (not entry.name.startswith(".") or entry.name == ".ci"):
                (folder / entry.name).symlink_to(entry)
        (folder / ".venv").symlink_to(BIN.parent)  # .venv/bin/gradwire: the venv under test
        made[path] = Reader(path, folder, env)
    return made


@pytest.mark.timeout(TEST_SECONDS)
@pytest.mark.filterwarnings("ignore:.*max_iter .* reached:UserWarning")  # sklearn.md's grid search
@pytest.mark.parametrize("block", RUN, ids=[block.name for block in RUN])
def test_block_runs(block: Block, readers: dict[Path, Reader], monkeypatch: pytest.MonkeyPatch) -> None:
    reason = block.skip_reason()
    if reason:
        pytest.skip(reason)
    readers[block.path].run(block, monkeypatch)


@pytest.mark.timeout(TEST_SECONDS)
def test_the_readme_quickstart_learns_xor(
    readers: dict[Path, Reader], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond running, the quickstart does what the README says: the network learns XOR, through
    the SDK and from the shell (its blocks run here if they were not selected above)."""
    readme = readers[ROOT / "README.md"]
    quickstart = [block for block in RUN if block.path == readme.path and block.skip_reason() is None][:2]
    assert [block.kind for block in quickstart] == ["python", "shell"], "the quickstart moved"
    if readme.failed.get(quickstart[1].line, True):
        readme.run(quickstart[1], monkeypatch)
    sdk, shell = (readme.printed[block.line] for block in quickstart)
    assert "[0 1 1 0]" in sdk
    assert "version 2" in shell  # train's last line: what it learnt is the model's version 2
    predictions = [float(p) for p in (readme.folder / "predictions.csv").read_text().split()]
    assert [p > 0.5 for p in predictions] == [False, True, True, False]


def test_marks_are_on_runnable_blocks_and_spelled_right() -> None:
    """A mark before a block that never runs anyway, or a comment before a fence that is not a mark
    (``<!-- not-run ... -->``), is a mistake that would hide a block or mislead a reader."""
    wrong = []
    for path in DOCUMENTS:
        lines = path.read_text().splitlines()
        for block in fenced_blocks(path):
            before = lines[block.line - 2] if block.line > 1 else ""
            if block.mark and not block.kind:
                wrong.append(f"{block.name}: marked, but a block tagged {block.tag!r} never runs")
            elif "<!--" in before and not block.mark:
                wrong.append(f"{block.name}: {before.strip()} is not a mark this runner knows")
    assert not wrong, "\n".join(wrong)
