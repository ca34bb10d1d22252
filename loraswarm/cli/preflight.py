"""What `loraswarm ask` needs running, checked in seconds before it waits for an answer.

A request published into a swarm that is not there waits out its whole deadline and says only
"no answer". These checks name the missing part instead, each with the command that fixes it:
Kafka itself, a planner consuming the requests (its consumer group has live members), the model
server the planner and specialists call, and the tenant (a configuration file, an adapter or
indexed documents: a tenant with none of them has nothing to answer from).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

import httpx

from loraswarm.shared.settings import Settings

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

PLANNER_GROUP = "planner"  # services/planner/app.py GROUP (the cli may not import a service's app)
CHECK_TIMEOUT_S = 2.0


def _listening(host: str, port: int, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def kafka_problem(settings: Settings) -> str | None:
    servers = [s.strip() for s in settings.kafka.bootstrap_servers.split(",") if s.strip()]
    for server in servers:
        host, _, port = server.rpartition(":")
        if _listening(host or server, int(port or 9092)):
            return None
    return (
        f"no Kafka at {settings.kafka.bootstrap_servers}: start it with `loraswarm infra up kafka` "
        "(or set LORASWARM_KAFKA__BOOTSTRAP_SERVERS)"
    )


async def _planner_members(settings: Settings) -> int:
    """Live members of the planner's consumer group (0: nobody consumes requests)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from loraswarm.shared.kafka_client import aiokafka_security

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        request_timeout_ms=int(CHECK_TIMEOUT_S * 1000),
        **aiokafka_security(settings.kafka),
    )
    await admin.start()
    try:
        group_id = settings.kafka.group(PLANNER_GROUP)
        described = await _describe_retrying(admin, group_id)
        members = 0
        for response in described:
            for group in response.groups:
                # (error_code, group_id, state, protocol_type, protocol, members): the group's
                # id carries the topic prefix, so its members are this prefix's planners.
                if group[1] == group_id and group[2] == "Stable":
                    members += len(group[5])
        return members
    finally:
        await admin.close()


async def _describe_retrying(admin: AIOKafkaAdminClient, group_id: str) -> Any:  # aiokafka ships no types
    """describe_consumer_groups, again while Kafka answers a retriable error: on a fresh broker the
    first group lookup creates __consumer_offsets and is answered GroupCoordinatorNotAvailable
    until its leader is elected (a second or so), as Kafka's own clients retry it."""
    from aiokafka.errors import KafkaError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * CHECK_TIMEOUT_S
    while True:
        try:
            return await admin.describe_consumer_groups([group_id])
        except KafkaError as exc:
            if not exc.retriable or loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


def planner_problem(settings: Settings) -> str | None:
    try:
        members = asyncio.run(asyncio.wait_for(_planner_members(settings), timeout=3 * CHECK_TIMEOUT_S))
    except Exception as exc:  # an unanswered admin call says as much as an empty group
        return f"cannot see whether a planner runs ({type(exc).__name__}: {exc}): is Kafka healthy? `loraswarm infra status`"
    if members:
        return None
    return (
        "no planner is consuming requests: run the services with `loraswarm serve all --broker kafka` "
        "(in another terminal)"
    )


def model_server_problem(settings: Settings) -> str | None:
    url = settings.orchestration.tgi_url.rstrip("/")
    try:
        httpx.get(f"{url}/health", timeout=CHECK_TIMEOUT_S)
        return None  # any answer: a server is there (its own health is its business)
    except httpx.HTTPError:
        pass
    return (
        f"no model server at {url}: `loraswarm serve all --broker kafka` starts one "
        "(or `loraswarm serve model-server`; LORASWARM_ORCHESTRATION__TGI_URL says where it runs)"
    )


def tenant_problem(settings: Settings, tenant_id: str) -> str | None:
    from loraswarm.shared.adapter_store import AdapterStore

    if (settings.orchestration.tenants_dir / f"{tenant_id}.yaml").exists():
        return None
    if AdapterStore.under(settings.data_dir).list(tenant_id):
        return None
    try:
        from loraswarm.shared.vectorstore import VectorStore, VectorStoreError

        with VectorStore.open(settings) as store:
            if store.has_tenant(tenant_id):
                return None
    except VectorStoreError:
        return f"no tenant {tenant_id!r} here, and Weaviate is not reachable to look for its documents: `loraswarm infra up weaviate`"
    return (
        f"no tenant {tenant_id!r}: no configuration, no documents, no adapter. "
        f"`loraswarm tenants create {tenant_id}`, then `loraswarm ingest <folder> --tenant {tenant_id}`"
    )


def problems(settings: Settings, tenant_id: str) -> list[str]:
    """What stands between this request and an answer; empty when everything is there."""
    found = []
    kafka = kafka_problem(settings)
    if kafka is not None:
        found.append(kafka)
    else:
        planner = planner_problem(settings)
        if planner is not None:
            found.append(planner)
    model_server = model_server_problem(settings)
    if model_server is not None:
        found.append(model_server)
    tenant = tenant_problem(settings, tenant_id)
    if tenant is not None:
        found.append(tenant)
    return found
