"""`loraswarm ingest`, `loraswarm search`, `loraswarm documents ...` and `loraswarm bench ingest`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loraswarm.shared.settings import Settings

console = Console()
err = Console(stderr=True)

documents_app = typer.Typer(
    help="A tenant's indexed documents: count them, delete them.", no_args_is_help=True
)


def _settings(collection: str | None) -> Settings:
    settings = Settings()
    if collection:
        settings.retrieval.collection = collection
    return settings


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]{escape(message)}[/red]")
    return typer.Exit(1)


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def ingest(
    paths: list[Path] = typer.Argument(..., help="Files and folders (md, txt, html, pdf, csv, json, jsonl)."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="The company whose shard receives them."),
    user: str | None = typer.Option(
        None, "--user", "-u", help="Index them as this user's private documents (default: company-wide)."
    ),
    source: str = typer.Option("files", "--source", "-s", help="The data source they belong to."),
    template: str | None = typer.Option(
        None, "--template", help="Text of a CSV/JSON record, e.g. '{subject}\\n{body}' (default: setting)."
    ),
    id_field: str | None = typer.Option(None, "--id-field", help="Record field that identifies a record."),
    title_field: str | None = typer.Option(None, "--title-field", help="Record field used as its title."),
    batch: int = typer.Option(16, "--batch", min=1, help="Files indexed per batch."),
    publish: bool = typer.Option(
        False, "--publish", help="Send documents.submitted events to the ingestion service instead."
    ),
    collection: str | None = typer.Option(
        None, "--collection", help="Weaviate collection (default: setting)."
    ),
) -> None:
    """Index files and folders into a tenant's shard, with a progress bar."""
    from pydantic import TypeAdapter, ValidationError

    from loraswarm.services.ingestion.files import FileOptions, discover, load_file
    from loraswarm.shared.envelope import TenantId
    from loraswarm.shared.events import Document, DocumentFailure

    settings = _settings(collection)
    try:
        TypeAdapter(TenantId).validate_python(tenant)
    except ValidationError as exc:
        raise _fail(exc.errors()[0]["msg"]) from exc
    metadata: dict[str, Any] = {}
    if template is not None:
        metadata["text_template"] = template.replace("\\n", "\n")
    if id_field is not None:
        metadata["id_field"] = id_field
    if title_field is not None:
        metadata["title_field"] = title_field
    options = FileOptions(
        source=source,
        visibility=f"user:{user}" if user else "company",
        metadata=metadata,
        max_bytes=settings.retrieval.max_document_bytes,
    )
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _fail(f"no such file or folder: {', '.join(map(str, missing))}")
    files = list(discover(paths))
    if not files:
        raise _fail("no files of a known type (md, txt, html, pdf, csv, json, jsonl) under those paths")

    failures: list[DocumentFailure] = []
    if publish:
        docs: list[Document] = []
        for file in files:
            loaded = load_file(file, options)
            (failures if isinstance(loaded, DocumentFailure) else docs).append(loaded)  # type: ignore[arg-type]
        sent, too_big = asyncio.run(_publish(settings, tenant, docs))
        failures += too_big
        console.print(f"submitted {sent} documents to documents.submitted for the ingestion service")
        _print_failures(failures)
        raise typer.Exit(1 if failures else 0)

    from loraswarm.services.ingestion.pipeline import Indexer, IndexReport
    from loraswarm.shared.embeddings import load_embedder
    from loraswarm.shared.secrets import DocumentSecrets
    from loraswarm.shared.vectorstore import VectorStore, VectorStoreError

    total = IndexReport()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("loading the embedding model", total=len(files))
        try:
            store = VectorStore.open(settings)
        except VectorStoreError as exc:
            raise _fail(str(exc)) from exc
        with store:
            secrets = DocumentSecrets.under(settings.data_dir)
            indexer = Indexer(store, load_embedder(settings), settings.retrieval, secrets=secrets)
            progress.update(task, description=f"indexing into {tenant}")
            for group in _batches(iter(files), batch):
                docs = []
                for file in group:
                    loaded = load_file(file, options)
                    if isinstance(loaded, DocumentFailure):
                        total.failures.append(loaded)
                    else:
                        docs.append(loaded)
                if docs:
                    total.add(indexer.index(tenant, docs))
                progress.advance(task, len(group))
    seconds = total.timings_ms.get("total", 0.0) / 1000
    console.print(
        f"{len(total.indexed)} documents indexed ({total.records} records, {total.chunks} chunks written, "
        f"{len(total.unchanged)} unchanged) in {seconds:.1f} s; {len(total.failures)} failed"
    )
    _print_failures(total.failures)
    if total.failures:
        raise typer.Exit(1)


async def _publish(settings: Settings, tenant: str, docs: Sequence[Any]) -> tuple[int, list[Any]]:
    """documents.submitted events, as many documents each as fit in one Kafka message."""
    from loraswarm.shared.bus import EventBus
    from loraswarm.shared.events import DocumentFailure, DocumentsSubmitted

    limit = int(settings.kafka.max_message_bytes * 0.9)  # room for the envelope
    events: list[DocumentsSubmitted] = []
    too_big: list[DocumentFailure] = []
    group: list[Any] = []
    size = 0
    for doc in docs:
        doc_size = len(doc.model_dump_json())
        if doc_size > limit:
            reason = (
                f"{doc_size / 2**20:.1f} MiB is more than one Kafka message holds "
                f"({limit / 2**20:.1f} MiB); ingest it without --publish"
            )
            too_big.append(DocumentFailure(doc_id=doc.doc_id, reason=reason))
            continue
        if group and (size + doc_size > limit or len(group) >= 1000):
            events.append(DocumentsSubmitted(tenant_id=tenant, documents=group))
            group, size = [], 0
        group.append(doc)
        size += doc_size
    if group:
        events.append(DocumentsSubmitted(tenant_id=tenant, documents=group))
    async with EventBus(settings, service="cli") as bus:
        await bus.publish_many(events)
    return sum(len(e.documents) for e in events), too_big


def _print_failures(failures: Sequence[Any]) -> None:
    for failure in failures:
        err.print(f"[red]failed[/red] {escape(failure.doc_id)}: {escape(failure.reason)}")


def search(
    query: str = typer.Argument(..., help="What to look for."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="The company whose shard is searched."),
    user: str | None = typer.Option(None, "--user", "-u", help="Also search this user's private documents."),
    k: int | None = typer.Option(None, "-k", min=1, max=100, help="Passages to return (default: setting)."),
    alpha: float | None = typer.Option(
        None, "--alpha", min=0.0, max=1.0, help="0 = BM25 only, 1 = vector only (default: setting)."
    ),
    source: list[str] = typer.Option([], "--source", "-s", help="Only these sources (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the passages as JSON."),
    collection: str | None = typer.Option(
        None, "--collection", help="Weaviate collection (default: setting)."
    ),
) -> None:
    """Hybrid search in a tenant's shard: each passage with its citation and score."""
    from loraswarm.shared.retrieval import search as run_search
    from loraswarm.shared.vectorstore import VectorStoreError

    settings = _settings(collection)
    try:
        passages = run_search(settings, tenant, user, query, k=k, alpha=alpha, sources=source)
    except VectorStoreError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        console.print_json(json.dumps([p.model_dump() for p in passages]))
        return
    if not passages:
        console.print(f"no passages for {query!r} in {tenant}")
        return
    for rank, p in enumerate(passages, 1):
        c = p.citation
        console.print(
            f"[bold]{rank}.[/bold] score {p.score:.3f}  [cyan]{escape(c.title or c.doc_id)}[/cyan]  "
            f"({escape(c.source)} · {escape(c.doc_id)} · chunk {c.position})",
            highlight=False,
        )
        console.print(escape(p.text), highlight=False)
        console.print()


@documents_app.command("count")
def count(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="One tenant (default: every tenant)."),
    collection: str | None = typer.Option(
        None, "--collection", help="Weaviate collection (default: setting)."
    ),
) -> None:
    """Chunks per tenant."""
    from loraswarm.shared.vectorstore import VectorStore, VectorStoreError

    try:
        with VectorStore.open(_settings(collection)) as store:
            for name in [tenant] if tenant else store.tenants():
                console.print(f"{name}: {store.count(name)} chunks")
    except VectorStoreError as exc:
        raise _fail(str(exc)) from exc


@documents_app.command("delete")
def delete(
    tenant: str = typer.Option(..., "--tenant", "-t", help="The company."),
    doc: str | None = typer.Option(None, "--doc", help="A document id (a file's records too)."),
    source: str | None = typer.Option(None, "--source", "-s", help="Every document of this source."),
    user: str | None = typer.Option(None, "--user", "-u", help="Every private document of this user."),
    everything: bool = typer.Option(False, "--all", help="The tenant's whole shard."),
    collection: str | None = typer.Option(
        None, "--collection", help="Weaviate collection (default: setting)."
    ),
) -> None:
    """Delete by document, by source, by user, or a tenant's whole shard."""
    from loraswarm.shared.vectorstore import VectorStore, VectorStoreError

    if everything == any(x is not None for x in (doc, source, user)):
        raise _fail("give --doc, --source and/or --user, or --all alone")
    try:
        with VectorStore.open(_settings(collection)) as store:
            if everything:
                gone = store.delete_tenant(tenant)
                console.print(f"tenant {tenant}: {'shard deleted' if gone else 'had no shard'}")
                return
            n = store.delete(tenant, doc_id=doc, source=source, user_id=user)
            console.print(f"{n} chunks deleted from {tenant}")
    except VectorStoreError as exc:
        raise _fail(str(exc)) from exc


def bench_ingest(
    docs: int = typer.Option(60, "--docs", help="Documents of the ingest-throughput run."),
    tenants: int = typer.Option(20, "--tenants", help="Tenants of the query-latency run."),
    chunks_per_tenant: int = typer.Option(
        10_000, "--chunks-per-tenant", help="Chunks in each of those tenants."
    ),
    pool: int = typer.Option(
        1_000, "--pool", help="Distinct embedded texts the query-latency corpus is made of."
    ),
    queries: int = typer.Option(300, "--queries", help="Queries timed for p50/p95."),
    labelled: Path = typer.Option(
        Path("tests/retriever/data"), "--labelled", help="Labelled set for recall@5 (empty: skip)."
    ),
    out: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Markdown file to update."),
) -> None:
    """Ingest throughput vs bare embedding, query latency at scale, recall@5 by search mode."""
    from loraswarm.bench.ingest import BenchSizes, run

    sizes = BenchSizes(
        docs=docs,
        tenants=tenants,
        chunks_per_tenant=chunks_per_tenant,
        pool=pool,
        queries=queries,
        labelled=labelled if str(labelled) else None,
    )
    markdown = run(Settings(), sizes, out=out, log=console.print)
    console.print(markdown)
    console.print(f"written to {out}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("search")(search)
    app.add_typer(documents_app, name="documents")
    bench.command("ingest")(bench_ingest)
