"""The documentation must not drift from the code: the state machine as rendered by
``aegispay states``, every hook by its exact name, no hook that does not exist, and the README's
set-up commands as CI really runs them."""

from __future__ import annotations

import re
from pathlib import Path

import aegispay.testing
import pytest
from aegispay import hookspecs
from aegispay.states import transition_diagram_mermaid, transition_table_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "architecture.md"
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"

# A hook-like word not followed by a dot (``aegispay_stripe.fake`` is a module path).
HOOK_NAME = re.compile(r"aegispay_[a-z_]+(?![a-z_.])")
# The gateway packages' import names (aegispay-*/), which the docs name too.
PACKAGE_NAMES = frozenset({"aegispay_stripe", "aegispay_razorpay", "aegispay_paypal"})
# Names matching HOOK_NAME that are not hooks: the pytest fixtures of aegispay.testing.
NOT_HOOKS = frozenset({"aegispay_service"})
FENCED_SH = re.compile(r"^```sh\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def read(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(ROOT)} does not exist"
    return path.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section: up to the next level-2 heading."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        pytest.fail(f"heading {heading!r} not found")
    body = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        body.append(line)
    return "\n".join(body) + "\n"


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# --- the state machine --------------------------------------------------------------------------


def test_architecture_has_the_exact_mermaid_diagram() -> None:
    block = f"```mermaid\n{transition_diagram_mermaid()}\n```\n"
    assert block in read(ARCHITECTURE), (
        "docs/architecture.md must contain the output of 'aegispay states --mermaid' as a "
        f"```mermaid block, exactly:\n{block}"
    )


def test_architecture_has_the_exact_transition_table() -> None:
    table = transition_table_markdown()
    assert f"\n{table}\n" in read(ARCHITECTURE), (
        f"docs/architecture.md must contain the output of 'aegispay states', exactly:\n{table}"
    )


# --- hooks ----------------------------------------------------------------------------------------


def test_every_hook_is_in_the_architecture_hook_reference() -> None:
    reference = section(read(ARCHITECTURE), "## Hook reference")
    missing = [name for name in hookspecs.hook_names() if f"`{name}" not in reference]
    assert missing == [], f"hooks missing from the hook reference in architecture.md: {missing}"


def test_hook_reference_follows_the_order_of_hookspecs() -> None:
    reference = section(read(ARCHITECTURE), "## Hook reference")
    names = hookspecs.hook_names()
    positions = {name: reference.index(f"`{name}") for name in names if f"`{name}" in reference}
    assert sorted(positions, key=positions.__getitem__) == [n for n in names if n in positions]


def test_non_hook_names_in_docs_exist() -> None:
    for name in NOT_HOOKS:
        assert name not in hookspecs.hook_names()
        assert hasattr(aegispay.testing, name), f"aegispay.testing has no fixture {name!r}"


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_hook_named_in_the_docs_exists(path: Path) -> None:
    known = set(hookspecs.hook_names()) | NOT_HOOKS | PACKAGE_NAMES
    unknown = sorted(set(HOOK_NAME.findall(read(path))) - known)
    assert unknown == [], f"{path.relative_to(ROOT)} names hooks that do not exist: {unknown}"


# --- the README's set-up commands ---------------------------------------------------------------


def setup_blocks() -> list[str]:
    return FENCED_SH.findall(section(read(README), "## Set-up on a fresh machine"))


def test_readme_setup_has_exactly_two_sh_blocks() -> None:
    blocks = setup_blocks()
    assert len(blocks) == 2, f"expected 2 ```sh blocks under the set-up heading, got {blocks}"


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    blocks = setup_blocks()
    assert len(blocks) == 2
    command = [line.strip() for line in blocks[1].splitlines() if line.strip()]
    script = [line.strip() for line in read(CI_SCRIPT).splitlines()]
    found = any(
        script[i : i + len(command)] == command for i in range(len(script) - len(command) + 1)
    )
    assert found, (
        "README's test command is not in .ci/run verbatim (as whole lines):\n" + "\n".join(command)
    )
