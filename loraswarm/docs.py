"""The generated sections of README.md: configuration, events, CLI and benchmarks.

Each section sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` and is rewritten
from its source of truth by `loraswarm docs`:

    config      the settings models (shared/settings/), walked with their nested groups
    events      the JSON Schemas in schemas/ and the channel descriptions of asyncapi.json
    cli         the typer app, every command and sub-command with its arguments and options
    benchmarks  the `<!-- bench:NAME -->` sections of BENCHMARKS.md

`tests/deploy/test_readme.py` fails when README.md differs from a fresh generation, the same way
`tests/shared/test_schemas.py` guards schemas/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from loraswarm.shared.settings import Settings

ENV_PREFIX = "LORASWARM_"
NESTED_DELIMITER = "__"
SECTIONS = ("config", "events", "cli", "benchmarks")


class DocsError(Exception):
    """README.md cannot be regenerated; the message says what to fix."""


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class SettingRow:
    """One leaf setting: where it lives, how to set it, what it is."""

    path: str  # dotted, e.g. "kafka.bootstrap_servers"
    env: str  # e.g. "LORASWARM_KAFKA__BOOTSTRAP_SERVERS"
    type: str
    default: str
    description: str


def setting_rows(model: type[BaseModel] = Settings) -> list[SettingRow]:
    """Every leaf setting of `model`, nested groups walked depth-first in declaration order."""
    return list(_walk(model, path=(), env=ENV_PREFIX))


def _walk(model: type[BaseModel], *, path: tuple[str, ...], env: str) -> Iterator[SettingRow]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        # pydantic-settings reads an aliased field from its alias; at the top level the prefix
        # does not apply to an alias.
        key = field.validation_alias if isinstance(field.validation_alias, str) else field.alias or name
        var = key.upper() if (not path and key != name) else f"{env}{key.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _walk(annotation, path=(*path, name), env=f"{var}{NESTED_DELIMITER}")
            continue
        yield SettingRow(
            path=".".join((*path, name)),
            env=var,
            type=_type_name(annotation) + _constraints(field),
            default=_default(field),
            description=field.description or "",
        )


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(named) + (" or unset" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])} (JSON)" if len(args) == 2 else "map (JSON)"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " \\| ".join(f"`{m.value}`" for m in annotation)
        if issubclass(annotation, SecretStr):
            return "secret"
        if issubclass(annotation, Path):
            return "path"
        if issubclass(annotation, BaseModel):
            return f"{annotation.__name__} (JSON)"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_BOUNDS: tuple[tuple[type[Any], str, str], ...] = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


def _constraints(field: FieldInfo) -> str:
    bounds = [
        f"{sign} {getattr(item, attr)}"
        for item in field.metadata
        for kind, attr, sign in _BOUNDS
        if isinstance(item, kind)
    ]
    return f", {' and '.join(bounds)}" if bounds else ""


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        # A factory may read the environment (e.g. a secret's short alias); the README shows
        # what a clean environment gets.
        with _without_loraswarm_env():
            value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return _show(value)


@contextlib.contextmanager
def _without_loraswarm_env() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, (dict, list, tuple)) and not value:
        return "empty"
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str, sort_keys=True)
    else:
        text = str(value)
    # Defaults under the home folder are shown as `~`, so the README is the same on every machine.
    home = str(Path.home())
    if home != "/":
        text = text.replace(home, "~")
    return f"`{text}`" if text else '`""`'


def config_reference() -> str:
    """Markdown tables of every setting, one table per group."""
    groups: dict[str, list[SettingRow]] = {}
    for row in setting_rows():
        group = row.path.split(".")[0] if "." in row.path else ""
        groups.setdefault(group, []).append(row)
    out: list[str] = []
    for group, rows in groups.items():
        title = f"`{group}`: `{ENV_PREFIX}{group.upper()}{NESTED_DELIMITER}*`" if group else "General"
        out += [f"#### {title}", "", "| setting | env var | type | default | description |"]
        out.append("|---|---|---|---|---|")
        for row in rows:
            cells = [f"`{row.path}`", f"`{row.env}`", row.type, row.default, row.description]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------- events


_ENVELOPE = ("event_id", "type", "schema_version", "occurred_at", "tenant_id", "request_id", "causation_id")


def events_reference(schemas_dir: Path) -> str:
    """One row per event type (topic, key, payload fields), the envelope, and the value objects."""
    files = sorted(p for p in schemas_dir.glob("*.json") if p.name != "asyncapi.json")
    if not files:
        raise DocsError(f"no event schemas in {schemas_dir}; run `loraswarm schemas export` first")
    channels = _channel_descriptions(schemas_dir / "asyncapi.json")
    envelope: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    rows = ["| topic | key | payload fields | what it is |", "|---|---|---|---|"]
    for path in files:
        schema = json.loads(path.read_text())
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        topic = props.get("type", {}).get("const") or path.stem
        for name, definition in schema.get("$defs", {}).items():
            parts.setdefault(name, definition)
        if "tenant_id" in props:
            key = "`tenant_id`"
            envelope = envelope or {n: props[n] for n in _ENVELOPE if n in props}
        elif "key_b64" in props:
            key = "the original message's key"
        else:
            key = "none"
        payload = [n for n in props if n not in _ENVELOPE]
        fields = ", ".join(_field(n, props[n], n in required) for n in payload)
        description = channels.get(topic, schema.get("description", "")).removesuffix(" Key: tenant_id.")
        rows.append("| " + " | ".join(_cell(c) for c in (f"`{topic}`", key, fields, description)) + " |")
    out = [*rows, ""]
    if envelope:
        out += [
            "Every event but `dlq` also carries the envelope:",
            "",
            "| field | type | description |",
            "|---|---|---|",
        ]
        for name, field in envelope.items():
            # `type` is a constant per event: the topic it travels on.
            kind = "string: the topic" if "const" in field else _schema_type(field)
            out.append(f"| `{name}` | {_cell(kind)} | {_cell(field.get('description', ''))} |")
        out.append("")
    if parts:
        out += ["Value objects inside payloads:", "", "| object | fields |", "|---|---|"]
        for name in sorted(parts):
            definition = parts[name]
            required = set(definition.get("required", []))
            props = definition.get("properties", {})
            fields = ", ".join(_field(n, s, n in required) for n, s in props.items())
            out.append(f"| `{name}` | {_cell(fields)} |")
        out.append("")
    out.append(
        "A field marked `?` may be left out. Full JSON Schemas: `schemas/<topic>.json`; "
        "AsyncAPI 3.0: `schemas/asyncapi.json`."
    )
    return "\n".join(out) + "\n"


def _channel_descriptions(asyncapi: Path) -> dict[str, str]:
    if not asyncapi.is_file():
        return {}
    doc = json.loads(asyncapi.read_text())
    return {c["address"]: c.get("description", "") for c in doc.get("channels", {}).values()}


def _field(name: str, schema: dict[str, Any], required: bool) -> str:
    return f"`{name}{'' if required else '?'}`: {_schema_type(schema)}"


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    if "anyOf" in schema:
        named = [_schema_type(s) for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = any(s.get("type") == "null" for s in schema["anyOf"])
        return " \\| ".join(named) + (" \\| null" if nullable else "")
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_schema_type(schema.get('items', {}))}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[{_schema_type(schema['additionalProperties'])}]"
    if kind == "string" and "format" in schema:
        return f"string ({schema['format']})"
    return str(kind)


# ---------------------------------------------------------------- CLI

# Typer carries its own copy of click, so commands and parameters are read by their attributes
# (`commands`, `params`, `opts`, `param_type_name`) rather than by click's classes.


def cli_reference(root: Any | None = None) -> str:
    """A table of every `loraswarm` command with its arguments, options and help."""
    rows = ["| command | arguments and options | what it does |", "|---|---|---|"]
    for path, command in _commands(root or _loraswarm_command(), ("loraswarm",)):
        params = [p for p in command.params if not _internal(p)]
        described = "<br>".join(_param(p) for p in params) or "—"
        help_text = (command.help or command.short_help or "").strip().split("\n\n")[0]
        rows.append(f"| `{' '.join(path)}` | {_cell(described)} | {_cell(' '.join(help_text.split()))} |")
    return "\n".join(rows) + "\n"


def _loraswarm_command() -> Any:
    import typer

    from loraswarm.cli import app

    return typer.main.get_command(app)


def _commands(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    subcommands: dict[str, Any] | None = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name in sorted(subcommands):
        if not getattr(subcommands[name], "hidden", False):
            yield from _commands(subcommands[name], (*path, name))


def _internal(param: Any) -> bool:
    names = set(param.opts)
    return bool(names & {"--help", "--install-completion", "--show-completion"}) or bool(
        getattr(param, "hidden", False)
    )


def _param(param: Any) -> str:
    if param.param_type_name == "argument":
        name = (param.metavar or param.name or "").upper()
        text = f"`{name}{'...' if param.nargs == -1 else ''}`"
    else:
        text = "`" + " / ".join((*param.opts, *getattr(param, "secondary_opts", ()))) + "`"
    choices = getattr(getattr(param, "type", None), "choices", None)
    if choices:
        text += " (" + " \\| ".join(f"`{c}`" for c in choices) + ")"
    help_text = " ".join((getattr(param, "help", None) or "").split())
    default = param.default
    if not (
        default is None
        or callable(default)
        or param.param_type_name == "argument"
        or getattr(param, "is_flag", False)
    ):
        text += f" (default `{_show(default).strip('`')}`)"
    return f"{text}: {help_text}" if help_text else text


# ---------------------------------------------------------------- benchmarks

_BENCH = re.compile(r"<!-- bench:(?P<name>[\w.-]+) -->\n(?P<body>.*?)\n<!-- /bench:(?P=name) -->", re.S)


def benchmarks_reference(benchmarks: Path) -> str:
    """Every section of BENCHMARKS.md, headings moved one level down to sit under the README's."""
    sections = list(_BENCH.finditer(benchmarks.read_text())) if benchmarks.is_file() else []
    if not sections:
        return (
            f"No benchmark has run yet: `loraswarm bench <name>` writes its section into "
            f"`{benchmarks.name}`, then `loraswarm docs` copies it here.\n"
        )
    out = [f"From `{benchmarks.name}`; each `loraswarm bench <name>` replaces its own section.", ""]
    for match in sections:
        body = re.sub(r"^(#{1,5}) ", lambda m: "#" * (len(m[1]) + 1) + " ", match["body"].strip(), flags=re.M)
        out += [body, ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------- README


def generate(root: Path) -> dict[str, str]:
    """Section name -> fresh markdown, from the sources under the repository `root`."""
    makers: dict[str, Callable[[], str]] = {
        "config": config_reference,
        "events": lambda: events_reference(root / "schemas"),
        "cli": lambda: cli_reference(),
        "benchmarks": lambda: benchmarks_reference(root / "BENCHMARKS.md"),
    }
    return {name: makers[name]() for name in SECTIONS}


def _marker(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- generated:{name} -->\n)(?P<body>.*?)(<!-- /generated:{name} -->)",
        re.S,
    )


def render(readme: str, sections: dict[str, str]) -> str:
    """`readme` with every generated section replaced by its fresh text."""
    for name, body in sections.items():
        pattern = _marker(name)
        if not pattern.search(readme):
            raise DocsError(
                f"README.md lacks the markers of the {name!r} section: put "
                f"`<!-- generated:{name} -->` and `<!-- /generated:{name} -->` on lines of their own"
            )
        readme = pattern.sub(lambda m, b=body: m[1] + b + m[3], readme, count=1)  # type: ignore[misc]
    return readme


def stale(readme_path: Path) -> list[str]:
    """Names of the generated sections whose text in `readme_path` differs from a fresh generation."""
    text = readme_path.read_text()
    fresh = generate(readme_path.parent)
    names = []
    for name, body in fresh.items():
        match = _marker(name).search(text)
        if match is None or match["body"] != body:
            names.append(name)
    return names


def write(readme_path: Path) -> list[str]:
    """Regenerate the sections of `readme_path` in place; the names of those that changed."""
    if not readme_path.is_file():
        raise DocsError(f"{readme_path} does not exist; run `loraswarm docs` in the repository's root")
    changed = stale(readme_path)
    if changed:
        readme_path.write_text(render(readme_path.read_text(), generate(readme_path.parent)))
    return changed


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: unescaped pipes would split the cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", text.replace("\n", " "))
