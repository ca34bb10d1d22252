"""`loraswarm tenants create|list|show|add-user|keys create|revoke|delete`: a company's set-up.

The same operations as the gateway's admin HTTP API (`/v1/admin/tenants`), through the same
functions (services/gateway/tenant_admin.py); this side works on the local files directly.
"""

from __future__ import annotations

import typer
from rich.console import Console

from loraswarm.shared.settings import Settings

console = Console()
tenants_app = typer.Typer(
    help="Companies: create one, list and show them, add users, gateway API keys, delete.",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="The gateway's API keys of a tenant (stored hashed).", no_args_is_help=True)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]{exc}[/red]")
    return typer.Exit(1)


@tenants_app.command()
def create(
    tenant: str = typer.Argument(..., help="The tenant id: a-z, 0-9, '_' and '-'."),
    description: str = typer.Option("", "--description", "-d", help="What the company does, in a sentence."),
    name: str = typer.Option("", "--name", help="Display name (default: from the tenant id)."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing configuration."),
) -> None:
    """Write a working configuration for a new tenant, with default specialists."""
    from loraswarm.services.gateway.tenant_admin import TenantAdminError
    from loraswarm.services.gateway.tenant_admin import create as create_tenant

    try:
        path = create_tenant(Settings(), tenant, display_name=name, description=description, replace=replace)
    except TenantAdminError as exc:
        raise _fail(exc) from exc
    console.print(f"created tenant {tenant}: {path} (specialists: knowledge, colleague)")


@tenants_app.command("list")
def list_() -> None:
    """Every tenant with a configuration, an API key or an adapter."""
    from loraswarm.services.gateway.tenant_admin import TenantAdminError, list_all

    try:
        found = list_all(Settings())
    except TenantAdminError as exc:
        raise _fail(exc) from exc
    if not found:
        console.print("no tenants yet: `loraswarm tenants create <tenant>`")
    for t in found:
        state = "configured" if t.configured else "defaults"
        console.print(f"{t.tenant_id:<20} {state:<11} {len(t.keys)} keys, {len(t.adapters)} adapters")


@tenants_app.command()
def show(tenant: str = typer.Argument(..., help="The tenant id.")) -> None:
    """A tenant's configuration, users, keys (names only) and adapters."""
    from loraswarm.services.gateway.tenant_admin import TenantAdminError
    from loraswarm.services.gateway.tenant_admin import show as show_tenant

    try:
        t = show_tenant(Settings(), tenant)
    except TenantAdminError as exc:
        raise _fail(exc) from exc
    console.print(f"tenant: {t.tenant_id}{f' ({t.display_name})' if t.display_name else ''}")
    console.print(f"configuration: {'yes' if t.configured else 'none (runs on defaults)'}")
    console.print(f"specialists: {', '.join(t.specialists) or '-'}")
    console.print(f"users: {'any' if t.users is None else ', '.join(t.users) or '-'}")
    keys = [str(k["name"]) + (f" (user {k['user_id']})" if k["user_id"] else "") for k in t.keys]
    console.print(f"API keys: {', '.join(keys) or '-'}")
    console.print(f"adapters: {', '.join(t.adapters) or '-'}")


@tenants_app.command("add-user")
def add_user(
    tenant: str = typer.Argument(..., help="The tenant id."),
    user: str = typer.Argument(..., help="The user id inside the tenant."),
) -> None:
    """Allow a user in the tenant (its `users` list)."""
    from loraswarm.services.gateway.tenant_admin import TenantAdminError
    from loraswarm.services.gateway.tenant_admin import add_user as add

    try:
        config = add(Settings(), tenant, user)
    except TenantAdminError as exc:
        raise _fail(exc) from exc
    console.print(f"tenant {tenant}: users {', '.join(config.users or [])}")


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Argument(..., help="The tenant id."),
    name: str = typer.Option("default", "--name", help="What the key is for (to revoke it by name)."),
    user: str | None = typer.Option(None, "--user", help="Bind the key to one user of the tenant."),
) -> None:
    """Add a gateway API key; it is printed once (only its sha256 is kept)."""
    from loraswarm.services.gateway.access import access_file
    from loraswarm.services.gateway.tenant_admin import TenantAdminError, create_key

    settings = Settings()
    try:
        key = create_key(settings, tenant, name, user)
    except TenantAdminError as exc:
        raise _fail(exc) from exc
    console.print(f"added key {name!r} for {tenant} to {access_file(settings)}; it is shown only now:")
    print(key)


@keys_app.command("revoke")
def keys_revoke(
    tenant: str = typer.Argument(..., help="The tenant id."),
    name: str = typer.Argument(..., help="The key's name."),
) -> None:
    """Remove a tenant's key by name (the gateway stops accepting it at once)."""
    from loraswarm.services.gateway.tenant_admin import TenantAdminError, revoke_key

    try:
        revoke_key(Settings(), tenant, name)
    except TenantAdminError as exc:
        raise _fail(exc) from exc
    console.print(f"revoked key {name!r} of {tenant}")


@tenants_app.command()
def delete(
    tenant: str = typer.Argument(..., help="The tenant id."),
    keep_documents: bool = typer.Option(False, "--keep-documents", help="Keep its document shard."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete everything a tenant has: adapters, canaries, trainer files, documents, keys, configuration."""
    from loraswarm.services.gateway.tenant_admin import TenantAdminError
    from loraswarm.services.gateway.tenant_admin import delete as delete_tenant
    from loraswarm.shared.vectorstore import VectorStoreError

    if not yes and not typer.confirm(f"delete everything tenant {tenant} has?"):
        raise typer.Exit(1)
    try:
        removed = delete_tenant(Settings(), tenant, documents=not keep_documents)
    except (TenantAdminError, VectorStoreError) as exc:
        raise _fail(exc) from exc
    console.print(f"tenant {tenant}: deleted {', '.join(removed) or 'nothing (there was nothing)'}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    tenants_app.add_typer(keys_app, name="keys")
    app.add_typer(tenants_app, name="tenants")
