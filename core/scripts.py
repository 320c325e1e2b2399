"""The one place values reach generated scripts (OUT/plan/launch.sh, job.sbatch).

A value is either quoted for the shell here (:func:`word`, :func:`export`,
:func:`default_export`), or checked against what it can be where it enters (the recipe's
validators use :func:`host_problem`, :func:`slurm_name_problem`,
:func:`single_line_problem`), so that no recipe string runs as a command in a script
ftx writes. ``#SBATCH`` lines are not read by a shell but end at a newline, so each is
written through :func:`sbatch_line`, which refuses control characters.
"""

from __future__ import annotations

import ipaddress
import re
import shlex

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# What Slurm takes for partition, account and job names without quoting surprises.
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,200}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def word(value: str) -> str:
    """``value`` as one shell word, taken literally."""
    return shlex.quote(value)


def reference_word(value: str) -> str:
    """A launch argument holding ``${FTX_...}`` references (translators write nothing
    else there): double-quoted, so the variables expand and nothing else does."""
    if "${FTX_" not in value:
        return word(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    # only the ${FTX_NAME} references may expand: any other $ is literal
    escaped = re.sub(r"\$(?!\{FTX_[A-Z_]+\})", r"\\$", escaped)
    return f'"{escaped}"'


def export(name: str, value: str) -> str:
    """``export NAME=value``, the value literal."""
    return f"export {name}={word(value)}\n"


def default_export(name: str, value: str) -> str:
    """``NAME`` from the environment when set and not empty, else ``value`` (literal),
    exported. (Not ``"${NAME:-value}"``: bash pairs single quotes inside a double-quoted
    expansion, so no quoting of ``value`` there is safe for every text.)"""
    return f'if [ -z "${{{name}:-}}" ]; then {name}={word(value)}; fi\nexport {name}\n'


def sbatch_line(option: str) -> str:
    """``#SBATCH option`` (one line: control characters are refused)."""
    problem = single_line_problem(option)
    if problem:
        raise ValueError(f"sbatch option {option!r}: {problem}")
    return f"#SBATCH {option}\n"


def single_line_problem(value: str) -> str | None:
    """Why ``value`` cannot stand on one script line (None when it can)."""
    found = CONTROL.search(value)
    if found:
        return f"holds a control character ({found.group()!r}, e.g. a newline)"
    return None


def host_problem(value: str) -> str | None:
    """Why ``value`` is not a host name or an IP address (None when it is)."""
    if not value:
        return "is empty"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(HOST_LABEL.match(label) for label in labels):
        return "is not a host name (letters, digits, hyphens, dots) or an IP address"
    return None


def slurm_name_problem(value: str) -> str | None:
    """Why ``value`` is not a Slurm partition, account or job name (None when it is)."""
    if not SLURM_NAME.match(value):
        return "may hold only letters, digits and _ . + - (at most 200)"
    return None
