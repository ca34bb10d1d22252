"""`loraswarm ask --tenant T [--user U] "question"`: publish a request, print the recommendation."""

from __future__ import annotations

import asyncio
import time

import typer
from rich.console import Console
from rich.panel import Panel

from loraswarm.shared.events import RecommendationCompleted, RecommendationFailed, RecommendationRequested
from loraswarm.shared.settings import Settings
from loraswarm.shared.topics import prefixed

console = Console()


async def _ask(
    settings: Settings, request: RecommendationRequested, timeout_s: float
) -> RecommendationCompleted | RecommendationFailed | None:
    from aiokafka import AIOKafkaConsumer

    from loraswarm.shared.bus import EventBus
    from loraswarm.shared.kafka_client import aiokafka_security

    kafka = settings.kafka
    topics = [prefixed(t, kafka.topic_prefix) for t in ("recommendation.completed", "recommendation.failed")]
    # A reader without a group, positioned at the end before the request goes out: it sees only new answers.
    reader = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="latest",
        **aiokafka_security(kafka),
    )
    await reader.start()
    try:
        await reader.getmany(timeout_ms=500)  # joins the partitions at their end
        async with EventBus(settings, service="ask") as bus:
            await bus.publish(request)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await reader.getmany(timeout_ms=500)).values():
                for record in records:
                    model = RecommendationCompleted if record.topic == topics[0] else RecommendationFailed
                    event = model.model_validate_json(record.value)
                    if event.request_id == request.request_id:
                        return event
        return None
    finally:
        await reader.stop()


def ask(
    question: str = typer.Argument(..., help="What to ask."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="The company."),
    user: str | None = typer.Option(None, "--user", "-u", help="The user inside the company."),
    timeout_s: float = typer.Option(180.0, "--timeout", help="How long to wait for the answer."),
    check: bool = typer.Option(
        True, "--check/--no-check", help="First check (in seconds) that the services it needs are running."
    ),
) -> None:
    """Publish a recommendation request to Kafka and print the recommendation when it arrives."""
    from loraswarm.cli.preflight import problems

    settings = Settings()
    if check:
        missing = problems(settings, tenant)
        for problem in missing:
            console.print(f"[red]{problem}[/red]", soft_wrap=True)
        if missing:
            raise typer.Exit(1)
    request = RecommendationRequested(tenant_id=tenant, user_id=user, question=question, deadline_s=timeout_s)
    with console.status(f"asked {tenant}{' / ' + user if user else ''} (request {request.request_id}) ..."):
        outcome = asyncio.run(_ask(settings, request, timeout_s + 5))
    if outcome is None:
        console.print(f"[red]no answer within {timeout_s:.0f} s[/red] (request {request.request_id})")
        raise typer.Exit(1)
    if isinstance(outcome, RecommendationFailed):
        console.print(f"[red]failed ({outcome.code})[/red]: {outcome.reason}")
        raise typer.Exit(1)
    lines = [f"[bold]{outcome.summary}[/bold]"] if outcome.summary else []
    for i, rec in enumerate(outcome.recommendations, 1):
        cites = "; ".join(f"{c.title or c.doc_id} ({c.source}#{c.position})" for c in rec.citations)
        lines.append(f"{i}. [bold]{rec.title}[/bold]: {rec.text}\n   [dim]cites: {cites or '-'}[/dim]")
    for c in outcome.contributions:
        lines.append(
            f"[dim]{c.specialist}: {' + '.join(c.adapter_ids) or 'base'}, "
            f"{c.usage.input_tokens}/{c.usage.output_tokens} tokens, {c.duration_ms:.0f} ms[/dim]"
        )
    for note in outcome.notes:
        lines.append(f"[yellow]note: {note}[/yellow]")
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in outcome.timings_ms.items())
    lines.append(
        f"[dim]timings: {timings}[/dim]" + ("  [yellow](partial)[/yellow]" if outcome.partial else "")
    )
    console.print(Panel("\n".join(lines), title=f"{tenant}{' / ' + user if user else ''}: {question}"))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("ask")(ask)
