"""The README and every command's --help example run as shown.

The README's ```bash blocks are commands to run (syntax summaries live in ```text blocks);
each `ftx` line runs in order in a scratch copy of the project in the state `make run`
leaves (the quickstart model, a run in runs/quickstart), paths under /tmp moved into the
scratch folder. Every command's help examples run in their own scratch copy, after the
setup :data:`PRELUDE` names for that command. What needs a cluster, a GPU or a container
image is skipped by the explicit lists below, each with its reason; what trains for minutes
runs in `make test-full` only (marked heavy).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from conftest import ROOT, run_ftx_here

# Lines that cannot run on this machine, and why (checked by the tests they point at).
SKIP = {
    r"--runtime (podman|docker)": "needs a backend image (make test-images)",
    r"^ftx image ": "builds or moves images (make test-images)",
    r"^ftx (submit|status|cancel|launch)\b": "needs a Slurm cluster (tests/test_slurm.py)",
    r"--gpus-per-node|--variant cuda": "needs GPUs",
    r"^ftx serve ": "serves until stopped (tests/test_inference.py talks to it)",
    r"^ftx env remove ": "deletes an environment the other tests share (tests/test_envs.py)",
    r"--scheduler kubernetes": "needs the backend's image in a registry (tests/test_kubernetes.py)",
}
# Lines that train for minutes: make test-full runs them.
LONG = {
    r"^ftx run recipes/quickstart\.yaml --backend torch train\.learning_rate": "the quickstart",
    r"^ftx compare recipes/quickstart\.yaml": "20 steps on three backends",
    r"^ftx compare runs/quickstart-compare/": "the runs the line above makes",
    r"^ftx run recipes/quickstart\.yaml --backend paddle --trainer native": "the quickstart",
    r"^ftx eval runs/quickstart --data recipes/data/quickstart_heldout\.jsonl$": "100 answers",
    r"^ftx run recipes/quickstart_dpo\.yaml --backend torch$": "the preference quickstart",
}
# Commands whose help examples load a model and decode or convert (10-14 s each): make
# test-full runs them; test_inference and test_convert cover the commands in make test.
SLOW_HELP = {"generate", "chat", "merge-lora", "convert"}
# What a command's help examples start from (beyond the make-run state).
LORA_RUN = [
    "ftx init-model --arch llama --size tiny --out ./llama-hf",
    "ftx run recipes/quickstart.yaml model.path=$PWD/llama-hf method.finetuning=lora"
    " train.max_steps=2 --out runs/lora",
]
PRELUDE = {"convert": LORA_RUN, "merge-lora": LORA_RUN}


def _reason(line: str, table: dict[str, str]) -> str | None:
    return next((why for pattern, why in table.items() if re.search(pattern, line)), None)


def readme_commands() -> list[tuple[int, str]]:
    """(line number, command) of every `ftx` line in the README's bash blocks."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        start = text[: block.start()].count("\n") + 2
        for offset, line in enumerate(block.group(1).splitlines()):
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command.startswith("ftx "):
                found.append((start + offset, command))
    return found


def help_examples() -> Iterator[tuple[str, list[str]]]:
    """(command name, its example lines) for every command with examples."""
    from ftx.core.cli import commands

    def walk(group: click.Group, prefix: list[str]) -> Iterator[tuple[str, click.Command]]:
        for name, command in sorted(group.commands.items()):
            yield " ".join([*prefix, name]), command
            if isinstance(command, click.Group):
                yield from walk(command, [*prefix, name])

    for name, command in walk(commands(), []):
        text = command.help or ""
        if "Example" not in text:
            continue
        lines, joined = [], ""
        for raw in text.split("Example", 1)[1].splitlines()[1:]:
            line = re.sub(r"\s+#.*$", "", raw).strip()
            joined = f"{joined} {line.rstrip(chr(92)).strip()}".strip() if joined else line
            if line.endswith("\\"):
                joined = joined.rstrip("\\").strip()
                continue
            if joined.startswith(("ftx ", "curl ")):
                lines.append(joined)
            joined = ""
        yield name, lines


@pytest.fixture(scope="session")
def made_run(tmp_path_factory: pytest.TempPathFactory, quickstart_model: Path) -> Path:
    """runs/quickstart as `make run` leaves it (fewer steps: the docs test checks that the
    commands run, not how well the model learned)."""
    folder = tmp_path_factory.mktemp("made-run")
    scratch = _copy(folder)
    _run("ftx run recipes/quickstart.yaml --backend torch train.max_steps=5 --force", scratch)
    return scratch / "runs" / "quickstart"


def _copy(folder: Path, run: Path | None = None) -> Path:
    """A scratch copy of the project: its tracked files, the quickstart model, a run."""
    scratch = folder / "project"
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    files = listed.stdout.split()
    for name in files:
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    shutil.copytree(ROOT / ".ftx/models/quickstart-llama", scratch / ".ftx/models/quickstart-llama")
    if run is not None:
        shutil.copytree(run, scratch / "runs" / "quickstart", symlinks=True)
    (scratch / "tmp").mkdir()
    return scratch


def _run(line: str, scratch: Path) -> subprocess.CompletedProcess:
    """One documented line in ``scratch``: a single ftx command runs in this process
    (the real CLI, without an interpreter start each), a compound line in bash."""
    line = line.replace("/tmp/", f"{scratch}/tmp/")
    if line.startswith("ftx ") and not re.search(r"&&|\||;|\$\(|`", line):
        from ftx.core.console import set_quiet

        args = [os.path.expandvars(a.replace("$PWD", str(scratch))) for a in shlex.split(line)]
        here = os.getcwd()
        os.chdir(scratch)
        try:
            set_quiet(False)
            return run_ftx_here(*args[1:])
        finally:
            os.chdir(here)
    ftx = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{ftx}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", line],
        cwd=scratch,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=1800,
    )


def _check(line: str, where: str, scratch: Path, heavy: bool) -> None:
    if _reason(line, SKIP):
        return
    if _reason(line, LONG) and not heavy:
        return
    result = _run(line, scratch)
    assert result.returncode == 0, f"{where}: `{line}` exited {result.returncode}:\n" + (
        result.stdout[-1500:] + result.stderr[-2500:]
    )


def test_every_readme_bash_line_is_an_ftx_command_or_listed() -> None:
    """The extraction finds the README's commands (and every skip names a real line)."""
    commands = [c for _, c in readme_commands()]
    assert len(commands) > 30
    for pattern in [*SKIP, *LONG]:
        documented = commands + [e for _, lines in help_examples() for e in lines]
        assert any(re.search(pattern, c) for c in documented), pattern


@pytest.mark.env
def test_the_readme_commands_run_as_shown(tmp_path: Path, made_run: Path) -> None:
    scratch = _copy(tmp_path, made_run)
    for number, line in readme_commands():
        _check(line, f"README.md:{number}", scratch, heavy=False)


@pytest.mark.env
@pytest.mark.parametrize(
    "name",
    [
        # the examples that load models and decode run in make test-full
        pytest.param(name, marks=pytest.mark.heavy) if name in SLOW_HELP else name
        for name, lines in help_examples()
        if lines
    ],
)
def test_every_help_example_runs_as_shown(name: str, tmp_path: Path, made_run: Path) -> None:
    scratch = _copy(tmp_path, made_run)
    for line in PRELUDE.get(name, []):
        _check(line, f"setup of `ftx {name}`", scratch, heavy=True)
    for line in dict(help_examples())[name]:
        if line.startswith("curl "):
            continue  # beside `ftx serve`, which is skipped
        _check(line, f"`ftx {name} --help`", scratch, heavy=False)


@pytest.mark.env
@pytest.mark.heavy
def test_the_readme_commands_that_train_for_minutes_run_as_shown(
    tmp_path: Path, made_run: Path
) -> None:
    scratch = _copy(tmp_path, made_run)
    for number, line in readme_commands():
        if _reason(line, LONG):
            _check(line, f"README.md:{number}", scratch, heavy=True)
