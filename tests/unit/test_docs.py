"""The docs say what the code does: every setting is documented, every `gpuyard` command the README shows
exists with the options it shows, the README's set-up is exactly the two scripts, and the job environment
contract lists every variable a job gets from gpuyard."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from gpuyard.entrypoints.cli.main import app
from gpuyard.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
JOB_ENVIRONMENT = ROOT / "docs" / "job-environment.md"

SETUP_COMMANDS = ("scripts/run.sh", "scripts/test.sh")
# Variables read outside Settings: by the CLI (gpuyard.client.discover) and by the test fixtures.
OTHER_VARIABLES = {
    "GPUYARD_URL",
    "GPUYARD_TOKEN",
    "GPUYARD_TOKEN_FILE",
    "GPUYARD_TEST_AMQP_URL",
    "GPUYARD_TEST_PG_URL",
}
# Fenced blocks with these languages hold program output, not commands.
OUTPUT_LANGUAGES = {"text", "output", "json"}
SHELL_WORDS = {"do", "then", "else", "time", "sudo", "exec", "!"}
INSTALL_COMMAND = re.compile(r"^\s*(sudo\s+)?(pip3?|uv|conda|mamba|apt|apt-get|brew|dnf|yum|docker)\s")


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```([\w-]*)[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)


def command_lines(markdown: str) -> list[str]:
    """Lines of the command blocks (backslash continuations joined, `$ ` prompts dropped), and inline code."""
    lines: list[str] = []
    for language, body in fenced_blocks(markdown):
        if language.lower() in OUTPUT_LANGUAGES:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            lines.append(line.removeprefix("$ "))
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    lines.extend(re.findall(r"`([^`\n]+)`", prose))
    return lines


def shell_segments(line: str) -> Iterator[list[str]]:
    """The simple commands of one shell line, split at ; && || | ( ) and with leading VAR=value dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote in a prose snippet: plain words will do
        tokens = line.split()
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token and all(c in "();<>|&" for c in token):
            while segment and (segment[0] in SHELL_WORDS or re.match(r"^[A-Za-z_]\w*=", segment[0])):
                segment.pop(0)
            if segment:
                yield segment
            segment = []
        else:
            segment.append(token)


def gpuyard_invocations(markdown: str) -> list[list[str]]:
    """The arguments of every `gpuyard ...` (or `.venv/bin/gpuyard ...`) command the text shows."""
    found = []
    for line in command_lines(markdown):
        for segment in shell_segments(line):
            program = segment[0]
            if (program == "gpuyard" or program.endswith("/gpuyard")) and len(segment) > 1:
                found.append(segment[1:])
    return found


def cli() -> Any:
    """The Typer app as a click-style command tree (Typer may bring its own click, so no isinstance)."""
    return typer.main.get_command(app)


def subcommands(command: Any) -> dict[str, Any] | None:
    """A group's commands by name; None for a leaf command."""
    commands = getattr(command, "commands", None)
    return commands if isinstance(commands, dict) else None


def option_names(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def check_invocation(root: Any, args: list[str]) -> str:
    """Walk `args` through the CLI and return the command's path; an AssertionError says what is wrong."""
    command = root
    path: list[str] = []
    rest = list(args)
    while (commands := subcommands(command)) is not None and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in commands, (
            f"`gpuyard {' '.join(args)}`: {' '.join(['gpuyard', *path])} has no command {name!r} "
            f"(it has: {', '.join(sorted(commands))})"
        )
        command = commands[name]
        path.append(name)
    for word in rest:
        if word == "--":
            break
        arg = word.strip("[]")  # `[--all]`: an optional part in a usage line
        if arg.startswith("-") and len(arg) > 1:
            option = arg.split("=", 1)[0]
            assert option in option_names(command), (
                f"`gpuyard {' '.join(args)}`: {' '.join(['gpuyard', *path])} has no option {option!r}"
            )
    return " ".join(path)


def read(path: Path) -> str:
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    return path.read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    text = read(CONFIGURATION)
    missing = [
        f"GPUYARD_{name.upper()}" for name in Settings.model_fields if f"`GPUYARD_{name.upper()}`" not in text
    ]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_configuration_documents_no_unknown_variable() -> None:
    known = {f"GPUYARD_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    mentioned = set(re.findall(r"`(GPUYARD_[A-Z0-9_]+)`", read(CONFIGURATION)))
    assert mentioned >= OTHER_VARIABLES, f"docs/configuration.md lacks {sorted(OTHER_VARIABLES - mentioned)}"
    unknown = sorted(mentioned - known)
    assert not unknown, f"docs/configuration.md documents variables gpuyard does not read: {unknown}"


def test_readme_commands_are_real() -> None:
    root = cli()
    assert subcommands(root), "the gpuyard CLI has no commands"
    invocations = gpuyard_invocations(read(README))
    paths = {check_invocation(root, args) for args in invocations}
    # The walkthrough's commands, so that a README the parser cannot read does not pass unnoticed.
    for expected in ("submit", "ps", "queue", "gpus", "logs", "history", "cancel", "admin user add"):
        assert expected in paths, f"the README shows no `gpuyard {expected}`"


@pytest.mark.parametrize(
    ("args", "ok"),
    [
        (["submit", "--gpus", "1", "--name", "x", "--", "python", "-u", "t.py"], True),
        (["submit", "--no-shell-env", "--", "true"], True),
        (["admin", "user", "add", "alice", "--admin"], True),
        (["logs", "-f", "3"], True),
        (["ps", "[--all]"], True),
        (["logs", "[--fallow]", "3"], False),
        (["submitt", "--", "true"], False),
        (["admin", "user", "remove", "alice"], False),
        (["ps", "--mine"], False),
    ],
)
def test_check_invocation(args: list[str], ok: bool) -> None:
    root = cli()
    if ok:
        check_invocation(root, args)
    else:
        with pytest.raises(AssertionError):
            check_invocation(root, args)


def test_shell_segments() -> None:
    line = (
        "for i in 1 2; do GPUYARD_TOKEN=gy_x gpuyard submit --name s$i -- sleep 9; done && echo $(gpuyard ps)"
    )
    programs = [segment[0] for segment in shell_segments(line)]
    assert programs == ["for", "gpuyard", "done", "echo", "gpuyard"]


def test_readme_has_exactly_the_two_setup_commands() -> None:
    text = read(README)
    scripts = set(re.findall(r"\bscripts/[\w-]+(?:\.\w+)*", text))
    assert scripts == set(SETUP_COMMANDS), f"the README names the scripts {sorted(scripts)}"
    lines = [line.strip() for line in command_lines(text)]
    bare = [re.sub(r"\s+#.*$", "", line) for line in lines]
    for command in SETUP_COMMANDS:
        assert command in bare, f"the README never shows `{command}` as a command of its own"
    installs = [line for line in lines if INSTALL_COMMAND.match(line)]
    assert not installs, f"the README asks for set-up beyond the two scripts: {installs}"


def test_job_environment_lists_what_gpuyard_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuyard.adapters.broker.messages import Dispatch
    from gpuyard.entrypoints.worker.attempt import Attempt

    for key in list(os.environ):
        monkeypatch.delenv(key)
    dispatch = Dispatch(
        job_id=7, attempt=1, name="n", user="u", argv=["true"], gpu_indices=[0, 1], gpu_uuids=["a", "b"]
    )

    async def emit(_body: dict[str, Any]) -> None:
        return None

    attempt = Attempt(dispatch, node="box", jobs_dir=tmp_path, emit=emit, kill_grace_s=0)
    text = read(JOB_ENVIRONMENT)
    missing = sorted(key for key in attempt.environment() if f"`{key}" not in text)
    assert not missing, f"docs/job-environment.md does not list {missing}"
