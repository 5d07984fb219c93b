"""The README's two commands are what the project really runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sh_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = _sh_blocks(readme)
    assert len(blocks) == 2, "the README gives exactly two commands: quick start and tests"
    test_command = next(b for b in blocks if "pytest" in b)
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


def test_quickstart_command_exists() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "bash deploy/quickstart.sh" in _sh_blocks(readme)[0]
    assert (REPO / "deploy" / "quickstart.sh").is_file()


def test_documented_subcommands_exist() -> None:
    from edge_asd.cli import build_parser

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`edge-asd ([a-z-]+)", readme))
    parser = build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    known = set(actions[0].choices)  # type: ignore[union-attr]
    assert documented <= known, documented - known


def test_deploy_guide_runs_as_root_without_sudo() -> None:
    """The gateway is a fresh Debian where commands run as root: no sudo there."""
    guide = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "run every command on this page as root" in guide.lower()
    commands = "\n".join(re.findall(r"```sh\n(.*?)```", guide, flags=re.DOTALL))
    assert not re.search(r"\bsudo(edit)?\s", guide), "use runuser -u edge-asd -- / editor"
    assert "runuser -u edge-asd -- " in commands
