"""Slack: requests signed by slack_sdk's own signer get in; anything else gets 401 and publishes
nothing; answers go back through response_url (Block Kit with citations) or chat.postMessage."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from slack_sdk.signature import SignatureVerifier

from loraswarm.services.gateway.slack_signature import (
    SlackSignatureError,
    slack_signature,
    verify_slack_request,
)
from loraswarm.shared.settings import Settings
from tests.gateway.conftest import SLACK_SECRET, Receiver, Tenants, receiver, running_gateway, until

# Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
SLACK_DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)


def signed(body: bytes, *, secret: str = SLACK_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Headers as Slack sends them, signed by slack_sdk (not by the code under test)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}


def slash(text: str, response_url: str, team_id: str = "TACME") -> bytes:
    return urlencode(
        {
            "token": "unused",
            "team_id": team_id,
            "channel_id": "C1",
            "user_id": "U42",
            "command": "/ask",
            "text": text,
            "response_url": response_url,
            "trigger_id": "1.2.3",
        }
    ).encode()


FORM = {"content-type": "application/x-www-form-urlencoded"}


def enable_slack(settings: Settings, response_url_prefix: str) -> None:
    settings.gateway.slack_signing_secret = SecretStr(SLACK_SECRET)
    settings.gateway.slack_response_url_prefixes = [response_url_prefix]
    settings.gateway.webhook_backoff_s = 0.05


def test_slacks_documented_example_verifies() -> None:
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert slack_signature(SLACK_SECRET, "1531420618", SLACK_DOC_BODY) == expected
    verify_slack_request(
        SLACK_SECRET, timestamp="1531420618", signature=expected, body=SLACK_DOC_BODY, now=1531420618 + 299
    )


# slack_sdk takes non-blank secrets and UTF-8 bodies (what Slack sends).
@given(
    secret=st.text(min_size=1, max_size=64).filter(str.strip),
    text=st.text(max_size=2048),
    ts=st.integers(0, 2**33),
)
def test_our_check_agrees_with_slack_sdk(secret: str, text: str, ts: int) -> None:
    body = text.encode()
    sdk = SignatureVerifier(secret)
    signature = sdk.generate_signature(timestamp=str(ts), body=body)
    assert signature == slack_signature(secret, str(ts), body)
    verify_slack_request(secret, timestamp=str(ts), signature=signature, body=body, now=ts)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"secret": "another-secret"}, "does not match"),
        ({"body": SLACK_DOC_BODY + b"&text=more"}, "does not match"),
        ({"now": 1531420618 + 301}, "from now"),
        ({"now": 1531420618 - 301}, "from now"),
        ({"signature": None}, "missing"),
        ({"timestamp": "yesterday"}, "unix time"),
    ],
)
def test_a_request_that_is_not_slacks_is_refused(change: dict[str, Any], reason: str) -> None:
    args: dict[str, Any] = {
        "secret": SLACK_SECRET,
        "timestamp": "1531420618",
        "signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        "body": SLACK_DOC_BODY,
        "now": 1531420618,
        **change,
    }
    secret = args.pop("secret")
    with pytest.raises(SlackSignatureError, match=reason):
        verify_slack_request(secret, **args)


def test_the_signing_secret_comes_from_either_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASWARM_SLACK_SIGNING_SECRET", "short-name")
    secret = Settings().gateway.slack_signing_secret
    assert secret is not None and secret.get_secret_value() == "short-name"
    monkeypatch.setenv("LORASWARM_GATEWAY__SLACK_SIGNING_SECRET", "nested-name")
    secret = Settings().gateway.slack_signing_secret
    assert secret is not None and secret.get_secret_value() == "nested-name"


async def test_a_signed_slash_command_is_published_and_answered_in_block_kit(
    settings: Settings, tenants: Tenants
) -> None:
    slack = Receiver()
    async with receiver(slack, "/commands/T1/1/abc") as response_url:
        enable_slack(settings, response_url.rsplit("/commands", 1)[0])
        async with running_gateway(settings) as gateway:
            body = slash("how do we handle refunds?", response_url)
            ack = await gateway.client.post("/slack/commands", content=body, headers={**FORM, **signed(body)})
            assert ack.status_code == 200
            assert ack.json()["response_type"] == "ephemeral"
            assert "Working on it" in ack.json()["text"]
            await until(lambda: len(slack.accepted()) == 1, what="the answer at response_url")
    [request] = gateway.seen
    assert request.tenant_id == "acme"  # TACME is acme's workspace in its tenant configuration
    assert request.user_id == "u-42"  # mapped in the tenant configuration
    assert request.question == "how do we handle refunds?"
    assert request.reply_to is not None and request.reply_to.slack_response_url == response_url
    message = json.loads(slack.accepted()[0][1])
    assert message["response_type"] == "ephemeral"
    blocks = json.dumps(message["blocks"])
    assert "*Refund within 30 days*" in blocks
    assert "<https://acme.example/policy|Refund policy>" in blocks  # the citation, linked
    assert str(request.request_id) in blocks


async def test_unsigned_or_tampered_slack_requests_get_401_and_publish_nothing(
    settings: Settings, tenants: Tenants
) -> None:
    enable_slack(settings, "https://hooks.slack.com/")
    url = "https://hooks.slack.com/commands/T1/1/abc"
    async with running_gateway(settings) as gateway:
        body = slash("forged", url)
        attempts = {
            "wrong secret": (body, signed(body, secret="not-the-apps-secret")),
            "altered body": (slash("altered", url), signed(body)),
            "old timestamp": (body, signed(body, timestamp=int(time.time()) - 6 * 60)),
            "no signature": (body, {}),
        }
        for what, (sent, headers) in attempts.items():
            for path in ("/slack/commands", "/slack/events"):
                refused = await gateway.client.post(path, content=sent, headers={**FORM, **headers})
                assert refused.status_code == 401, f"{what} on {path}"
        # Same tenant, same partition: a forged request published before would arrive first.
        good = slash("genuine", url)
        assert (
            await gateway.client.post("/slack/commands", content=good, headers={**FORM, **signed(good)})
        ).status_code == 200
        await until(lambda: len(gateway.seen) == 1)
        await asyncio.sleep(0.3)
    assert [r.question for r in gateway.seen] == ["genuine"]


async def test_url_verification_is_answered_only_when_signed(settings: Settings, tenants: Tenants) -> None:
    enable_slack(settings, "https://hooks.slack.com/")
    async with running_gateway(settings, planner=None) as gateway:
        body = json.dumps(
            {
                "type": "url_verification",
                "token": "t",
                "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            }
        ).encode()
        answer = await gateway.client.post("/slack/events", content=body, headers=signed(body))
        assert answer.status_code == 200
        assert answer.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
        assert (await gateway.client.post("/slack/events", content=body)).status_code == 401


async def test_an_app_mention_is_taken_once_despite_retries_and_answered_in_its_thread(
    settings: Settings, tenants: Tenants
) -> None:
    slack_api = Receiver(json_answer={"ok": True})
    async with receiver(slack_api, "/api/chat.postMessage") as post_message:
        enable_slack(settings, "https://hooks.slack.com/")
        settings.gateway.slack_api_url = post_message.removesuffix("chat.postMessage")
        tenants.set("acme", slack_bot_token="xoxb-acme-test")
        async with running_gateway(settings) as gateway:
            event = {
                "type": "event_callback",
                "team_id": "TACME",
                "event_id": "Ev0123ABC",
                "event": {
                    "type": "app_mention",
                    "user": "U42",
                    "text": "<@U0BOT> which plan fits a 40-person team?",
                    "channel": "C77",
                    "ts": "1700000000.000100",
                },
            }
            body = json.dumps(event).encode()
            for retry in (None, "1", "2"):
                headers = signed(body) | (
                    {"X-Slack-Retry-Num": retry, "X-Slack-Retry-Reason": "http_timeout"} if retry else {}
                )
                assert (
                    await gateway.client.post("/slack/events", content=body, headers=headers)
                ).status_code == 200
            await until(lambda: len(slack_api.accepted()) == 1, what="chat.postMessage")
            await asyncio.sleep(0.3)
    assert [r.question for r in gateway.seen] == ["which plan fits a 40-person team?"]
    headers, sent, _ = slack_api.accepted()[0]
    assert headers["authorization"] == "Bearer xoxb-acme-test"
    posted = json.loads(sent)
    assert posted["channel"] == "C77"
    assert posted["thread_ts"] == "1700000000.000100"
    assert "Refund policy" in json.dumps(posted["blocks"])
    assert len(slack_api.calls) == 1


async def test_a_workspace_without_a_tenant_is_told_so(settings: Settings, tenants: Tenants) -> None:
    enable_slack(settings, "https://hooks.slack.com/")
    async with running_gateway(settings) as gateway:
        body = slash("hello?", "https://hooks.slack.com/commands/x", team_id="TSTRANGER")
        answer = await gateway.client.post("/slack/commands", content=body, headers={**FORM, **signed(body)})
        assert answer.status_code == 200
        assert "not connected" in answer.json()["text"]
        elsewhere = slash("hello?", "https://evil.example/collect")
        answer = await gateway.client.post(
            "/slack/commands", content=elsewhere, headers={**FORM, **signed(elsewhere)}
        )
        assert "response_url is not Slack's" in answer.json()["text"]
        await asyncio.sleep(0.3)
    assert gateway.seen == []
