"""Reading the deployment files the way Docker Compose, Kubernetes and Docker read them.

Compose: YAML with merge keys, then `${VAR}` / `${VAR:-default}` interpolation (each variable at
its default: what `docker compose up` gets on a host that sets none). Kubernetes: every document
of every file in deploy/k8s/. Dockerfile: the official BuildKit parser (the `dockerfile` package).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
TGI_ENTRYPOINT = ROOT / "deploy" / "docker" / "tgi-entrypoint.sh"

# Compose's interpolation syntax (compose-spec, "Interpolation"): $$ is a literal $.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        present = name in env
        non_empty = bool(env.get(name))
        if op in (":-", "-"):
            use_default = not non_empty if op == ":-" else not present
            return interpolate(arg, env) if use_default else env[name]
        if op in (":?", "?"):
            if (op == ":?" and not non_empty) or (op == "?" and not present):
                raise InterpolationError(f"{name} is required: {arg}")
            return env[name]
        if op in (":+", "+"):
            use_alt = non_empty if op == ":+" else present
            return interpolate(arg, env) if use_alt else ""
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)


def _interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def compose_raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as compose sees it with `env` (default: no variables set)."""
    resolved = _interpolate_tree(compose_raw(), env or {})
    assert isinstance(resolved, dict)
    return resolved


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    """A compose service's environment, list or map form; None = passed through from the host."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) for item in env]
        return {p[0]: (p[1] if len(p) == 2 else None) for p in pairs}
    return {
        k: (None if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()
    }


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:kind/name`, pod spec) of every workload in deploy/k8s/."""
    for path, doc in k8s_documents():
        if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


@dataclass(frozen=True)
class Instruction:
    cmd: str
    value: tuple[str, ...]
    flags: tuple[str, ...]
    json: bool
    line: int


def dockerfile() -> list[Instruction]:
    import dockerfile as parser  # type: ignore[import-not-found,import-untyped,unused-ignore]  # BuildKit parser

    return [
        Instruction(c.cmd.upper(), tuple(c.value), tuple(c.flags), c.json, c.start_line)
        for c in parser.parse_file(str(DOCKERFILE))
    ]


def dockerfile_env() -> dict[str, str]:
    """ENV of the final stage."""
    env: dict[str, str] = {}
    for instruction in dockerfile():
        if instruction.cmd == "FROM":
            env = {}
        elif instruction.cmd == "ENV":
            values = instruction.value
            env.update(dict(zip(values[::2], values[1::2], strict=True)))
    return env


def dockerignore_excludes(relative: str) -> bool:
    """Whether Docker leaves `relative` (a path in the context) out, by Dockerfile.dockerignore.

    Docker's rule: patterns in order, the last one matching the path or one of its parent
    folders wins; `!` re-includes; `**` spans folders.
    """
    excluded = False
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex = re.compile(_glob_to_regex(pattern))
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def _glob_to_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


# ---------------------------------------------------------------- loraswarm commands


def parse_command(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Parse a `loraswarm ...` command line with the real CLI, running nothing.

    Returns the sub-command path and its parsed parameters; raises on an unknown command, an
    unknown option or a bad value, as the CLI itself would.
    """
    import typer

    from loraswarm.cli import app

    if not argv or argv[0] != "loraswarm":
        raise ValueError(f"not a loraswarm command: {argv}")
    command: Any = typer.main.get_command(app)
    args, path = list(argv[1:]), list[str]()
    while getattr(command, "commands", None) is not None:
        if not args or args[0] not in command.commands:
            raise ValueError(f"`loraswarm {' '.join(path)}` has no sub-command {args[:1]}: {argv}")
        path.append(args.pop(0))
        command = command.commands[path[-1]]
    context = command.make_context(" ".join(["loraswarm", *path]), args)
    return path, dict(context.params)


def loraswarm_setting_names() -> set[str]:
    from loraswarm.docs import setting_rows

    return {row.env for row in setting_rows()}


# ---------------------------------------------------------------- engines' command lines


def option(argv: Sequence[object], flag: str) -> str:
    """The value that follows `flag` in a command line (`--flag value`, as vLLM and TGI take them)."""
    args = [str(a) for a in argv]
    assert args.count(flag) == 1, f"{flag} must appear exactly once in {args}"
    at = args.index(flag) + 1
    assert at < len(args) and not args[at].startswith("--"), f"{flag} has no value in {args}"
    return args[at]


def vllm_reads_true(value: str | None) -> bool:
    """vLLM's own reading of a boolean variable such as VLLM_ALLOW_RUNTIME_LORA_UPDATING
    (vllm/envs.py): `1` or `true`, any case, around spaces; anything else is off."""
    return value is not None and value.strip().lower() in ("1", "true")
