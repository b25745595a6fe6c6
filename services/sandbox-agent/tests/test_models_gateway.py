"""The model gateway on the host, through its InternalService face (as the egress proxy calls it), against a
real HTTPS provider under a test CA, real NATS (the budget events) and real Cedar policies (the baseline's
budget rules and an allow-list of models)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from symbi_common.settings import Settings
from symbi_contracts.lifecycle.config import AgentBudget
from symbi_contracts.models.events import CODEC as BUDGETS
from symbi_contracts.models.events import BudgetReserved
from symbi_fixtures.model_upstream import Provider, free_port, make_ca_and_server_cert, serving
from symbi_sandbox_agent.egress.internal import InternalRequest
from symbi_sandbox_agent.models.budget import aggregate_id, day_of
from symbi_sandbox_agent.models.gateway import ModelGateway
from symbi_sandbox_agent.models.pricing import chat_prompt_tokens

from .conftest import Agent, running_agent
from .models_support import API_KEY, MODEL_POLICY, assign, body_of, caller, chat, gateway, models_settings, post
from .store_faults import AcksLost
from .test_actions import BASELINE, register_policies


@dataclass
class Upstream:
    provider: Provider
    url: str
    ca: Path


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    ca, cert, key = make_ca_and_server_cert(tmp_path / "tls")
    provider = Provider(api_key=API_KEY)
    with serving(provider, cert, key) as url:
        yield Upstream(provider, url, ca)


@pytest.fixture
def model_settings(agent_settings: Callable[..., Settings]) -> Settings:
    return agent_settings(SYMBI_POLICY__ENFORCEMENT="embedded", SYMBI_POLICY__DECISION_LOG="false")


@pytest.fixture
async def daemon(make_store: Any, model_settings: Settings) -> AsyncIterator[Agent]:
    await register_policies(make_store, {"baseline": BASELINE.read_text(), "models": MODEL_POLICY})
    async with running_agent(model_settings) as agent:
        yield agent


def sse_events(data: bytes) -> list[Any]:
    lines = [line[5:].strip() for line in data.split(b"\n") if line.startswith(b"data:")]
    return [line.decode() if line == b"[DONE]" else json.loads(line) for line in lines]


async def usage_of(gw: ModelGateway, tenant: str = "default") -> Any:
    await gw.drain()
    return await gw.ledger.state(tenant)


async def test_a_call_streams_through_with_the_credential_injected(
    daemon: Agent, upstream: Upstream, make_store: Any
) -> None:
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 10_000}}))
    task = await assign(await make_store("scheduler"), daemon.host_id)
    with capture_logs() as logs:
        streamed = await gw.handle(caller(task), post("/v1/chat/completions", chat(stream=True)))
        assert streamed.status == 200
        assert ("content-type", "text/event-stream") in streamed.headers
        assert streamed.length is None  # chunked: passed on as it comes
        chunks = [c async for c in streamed.body]
        plain = await gw.handle(caller(task), post("/v1/chat/completions", chat()))
        plain_body = await body_of(plain)
        embedded = await gw.handle(caller(task), post("/v1/embeddings", b'{"model": "small", "input": ["a b", "c"]}'))
        embedded_body = await body_of(embedded)
        listed = await gw.handle(caller(task), InternalRequest("GET", "/v1/models", {}, b""))
        listed_body = json.loads(await body_of(listed))
        state = await usage_of(gw)
    events = sse_events(b"".join(chunks))
    assert "".join(e["choices"][0]["delta"]["content"] for e in events[:-2]) == "hello from the model"
    assert events[-2]["usage"]["completion_tokens"] == 5
    assert events[-1] == "[DONE]"
    assert plain.status == 200
    assert json.loads(plain_body)["choices"][0]["message"]["content"] == "hello from the model"
    assert embedded.status == 200
    assert len(json.loads(embedded_body)["data"]) == 2
    assert [m["id"] for m in listed_body["data"]] == ["test/small"]  # test/other is not allowed to agent-1
    # The provider got the host's key, never the sandbox's, and the upstream model name; the stream asked for usage.
    assert upstream.provider.authorizations == [f"Bearer {API_KEY}"] * 3
    assert [b["model"] for b in upstream.provider.bodies] == ["small", "small", "small"]
    assert upstream.provider.bodies[0]["stream_options"] == {"include_usage": True}
    # Usage reconciled from what the provider reported: 2 chats of 7+5 tokens and 3 embedded words.
    assert not state.open
    assert state.used["agent-1"].tokens == 2 * 12 + 3
    assert state.usage[("agent-1", "test/small")].calls == 3
    # The key is in nothing the sandbox gets back, no log line and no budget event.
    stored = await (await make_store("audit")).load("budget", aggregate_id(day_of(), "default"), BUDGETS)
    assert [type(r.event).__name__ for r in stored].count("BudgetReconciled") == 3
    everything = b"".join(chunks) + plain_body + embedded_body + repr(logs).encode()
    everything += b"".join(repr(r.event).encode() for r in stored)
    assert API_KEY.encode() not in everything
    assert b"sk-from-the-sandbox" not in b"".join(repr(b).encode() for b in upstream.provider.bodies)
    await gw.aclose()


@pytest.mark.parametrize("limit", [None, "max_tokens", "max_completion_tokens"])
async def test_a_call_is_held_to_its_reserved_limit_in_the_providers_parameter(
    limit: str | None, daemon: Agent, upstream: Upstream, make_store: Any
) -> None:
    """A chat request is sent the limit it was reserved for in the parameter the provider's ``completion_limit``
    names (``max_tokens`` unless set: OpenAI's reasoning models refuse it), and only there: the request's own
    limit under either name, else ``default_max_tokens`` (64). A limit under the name the provider does not know
    would be ignored there, and the completion run past its reservation."""
    tenants = {"default": {"tokens_per_day": 10_000}}
    extra = {} if limit is None else {"completion_limit": limit}
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, tenants, **extra))
    task = await assign(await make_store("scheduler"), daemon.host_id)
    unlimited = b'{"model": "test/small", "messages": [{"role": "user", "content": "hi"}]}'
    other_name = b'{"model": "test/small", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 8}'
    for body in (unlimited, chat(max_tokens=16), other_name):
        answer = await gw.handle(caller(task), post("/v1/chat/completions", body))
        reply = await body_of(answer)
        assert answer.status == 200, reply
    await gw.aclose()
    added = limit or "max_tokens"
    other = {"max_tokens": "max_completion_tokens", "max_completion_tokens": "max_tokens"}[added]
    for sent, reserved in zip(upstream.provider.bodies, (64, 16, 8), strict=True):
        assert sent[added] == reserved
        assert other not in sent


async def test_a_model_not_allowed_is_denied_before_anything_is_reserved(
    daemon: Agent, upstream: Upstream, make_store: Any
) -> None:
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 10_000}}))
    task = await assign(await make_store("scheduler"), daemon.host_id)
    answer = await gw.handle(caller(task), post("/v1/chat/completions", chat("test/other")))
    error = json.loads(await body_of(answer))["error"]
    assert answer.status == 403
    assert (error["code"], error["type"]) == ("denied", "permission_error")
    assert "test/other" in error["message"]
    unknown = await gw.handle(caller(task), post("/v1/chat/completions", chat("nope/model")))
    assert unknown.status == 404
    assert upstream.provider.calls == 0
    state = await usage_of(gw)
    assert not state.open
    assert not state.used
    # A task that is not this agent's is refused too (the caller comes from the socket, the budget from the task).
    stranger = await gw.handle(caller(task, agent="agent-2"), post("/v1/chat/completions", chat()))
    assert stranger.status == 403
    await gw.aclose()


async def test_concurrent_calls_on_two_hosts_cannot_overspend(
    daemon: Agent, upstream: Upstream, make_store: Any
) -> None:
    """20 calls at once, half through each of two gateways with their own event stores (two hosts), against an
    agent budget for exactly 5: 5 go through, 15 get the typed error, and nothing is spent beyond the budget."""
    per_call = chat_prompt_tokens(json.loads(chat())) + 16
    upstream.provider.usage = (per_call - 16, 16)  # the provider reports exactly what was reserved
    settings = models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 1_000_000}})
    first = gateway(daemon.daemon.rt, settings)
    second = gateway(daemon.daemon.rt, settings, store=await make_store("sandbox-agent"))
    task = await assign(await make_store("scheduler"), daemon.host_id, budget=AgentBudget(tokens_per_day=5 * per_call))

    async def one(gw: ModelGateway) -> tuple[int, dict[str, Any]]:
        answer = await gw.handle(caller(task), post("/v1/chat/completions", chat()))
        return answer.status, json.loads(await body_of(answer))

    answers = await asyncio.gather(*(one(first if i % 2 else second) for i in range(20)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 5 + [429] * 15, statuses
    refused = [body["error"] for status, body in answers if status == 429]
    assert {(e["code"], e["scope"], e["unit"]) for e in refused} == {("budget_exceeded", "agent", "tokens")}
    assert all(e["left"] < e["requested"] == per_call for e in refused)
    await first.drain()
    state = await usage_of(second)
    assert not state.open
    assert state.used["agent-1"].tokens == 5 * per_call
    assert upstream.provider.calls == 5
    await first.aclose()
    await second.aclose()


async def test_exhaustion_names_the_budget_and_what_is_left(daemon: Agent, upstream: Upstream, make_store: Any) -> None:
    """A tenant money budget of 100 micro-dollars: calls cost 7 in + 5 out = 17 after reconciling, but each
    reserves its prompt estimate plus 16 completion tokens at 2 each."""
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, {"acme": {"micro_usd_per_day": 100}}))
    task = await assign(await make_store("scheduler"), daemon.host_id, tenant="acme")
    prompt = chat_prompt_tokens(json.loads(chat()))
    reserve = prompt + 2 * 16
    ok = 0
    while True:
        answer = await gw.handle(caller(task), post("/v1/chat/completions", chat()))
        body = json.loads(await body_of(answer))
        await gw.drain()
        if answer.status != 200:
            break
        ok += 1
    error = body["error"]
    assert answer.status == 429
    assert (error["code"], error["type"], error["scope"], error["unit"]) == (
        "budget_exceeded", "insufficient_quota", "tenant", "micro_usd"
    )  # fmt: skip
    assert error["left"] == 100 - ok * 17
    assert error["requested"] == reserve
    assert f"has {error['left']} left" in error["message"]
    assert "acme" in error["message"]
    assert ok == (100 - reserve) // 17 + 1
    await gw.aclose()


async def test_a_failed_upstream_releases_its_reservation(
    daemon: Agent, upstream: Upstream, tmp_path: Path, make_store: Any
) -> None:
    settings = models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 1_000}})
    gw = gateway(daemon.daemon.rt, settings)
    task = await assign(await make_store("scheduler"), daemon.host_id)
    upstream.provider.fail_status = 500
    failed = await gw.handle(caller(task), post("/v1/chat/completions", chat(stream=True)))
    error = json.loads(await body_of(failed))["error"]
    assert failed.status == 502
    assert error["code"] == "upstream_failed"
    assert error["upstream_status"] == 500
    state = await usage_of(gw)
    assert not state.open
    assert not state.used
    # Nobody listening: connection refused.
    nowhere = models_settings(
        f"https://127.0.0.1:{free_port()}/v1", upstream.ca, {"default": {"tokens_per_day": 1_000}}
    )
    closed = gateway(daemon.daemon.rt, nowhere)
    refused = await closed.handle(caller(task), post("/v1/chat/completions", chat()))
    assert refused.status == 502
    assert "could not be reached" in json.loads(await body_of(refused))["error"]["message"]
    state = await usage_of(closed)
    assert not state.open
    assert not state.used
    await gw.aclose()
    await closed.aclose()


async def test_a_reservation_decided_on_a_stale_state_is_decided_again(
    daemon: Agent, upstream: Upstream, make_store: Any
) -> None:
    """Host A read the budget while it had room for one call; host B took it; A's append names the old
    version, is refused, and A decides again on the caught-up state: denied, nothing overspent."""
    per_call = chat_prompt_tokens(json.loads(chat())) + 16
    upstream.provider.usage = (per_call - 16, 16)
    settings = models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 1_000_000}})
    host_a = gateway(daemon.daemon.rt, settings)
    host_b = gateway(daemon.daemon.rt, settings, store=await make_store("sandbox-agent"))
    task = await assign(await make_store("scheduler"), daemon.host_id, budget=AgentBudget(tokens_per_day=per_call))
    listed = await host_a.handle(caller(task), InternalRequest("GET", "/v1/models", {}, b""))  # A reads the day
    assert listed.status == 200
    assert (await host_b.handle(caller(task), post("/v1/chat/completions", chat()))).status == 200
    late = await host_a.handle(caller(task), post("/v1/chat/completions", chat()))
    error = json.loads(await body_of(late))["error"]
    assert late.status == 429
    assert (error["scope"], error["left"]) == ("agent", 0)
    assert host_a.ledger.conflicts == 1
    assert upstream.provider.calls == 1
    await host_b.aclose()
    await host_a.aclose()


NO_BUDGET_POLICIES = "\n".join(
    line for line in BASELINE.read_text().split("\n\n") if "baseline-models-budget-tokens" not in line
)


@pytest.mark.parametrize("policy", ["baseline", "without-the-token-budget-rule"])
async def test_over_budget_is_a_policy(
    policy: str, upstream: Upstream, make_store: Any, model_settings: Settings
) -> None:
    """The same call over the agent's token budget: denied under the baseline, allowed once the baseline's
    token budget rule is removed (the budget is policy, not code)."""
    baseline = BASELINE.read_text() if policy == "baseline" else NO_BUDGET_POLICIES
    await register_policies(make_store, {"baseline": baseline, "models": MODEL_POLICY})
    async with running_agent(model_settings) as daemon:
        gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca))
        task = await assign(await make_store("scheduler"), daemon.host_id, budget=AgentBudget(tokens_per_day=10))
        answer = await gw.handle(caller(task), post("/v1/chat/completions", chat(max_tokens=100)))
        body = json.loads(await body_of(answer))
        await gw.aclose()
    if policy == "baseline":
        assert answer.status == 429
        assert (body["error"]["scope"], body["error"]["unit"], body["error"]["left"]) == ("agent", "tokens", 10)
    else:
        assert answer.status == 200
        assert body["usage"]["total_tokens"] == 12


async def test_a_call_no_budget_limits_is_refused(daemon: Agent, upstream: Upstream, make_store: Any) -> None:
    """Fail closed: neither the agent nor its tenant has a budget, so the baseline denies, saying how to fix it."""
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca))
    task = await assign(await make_store("scheduler"), daemon.host_id)
    answer = await gw.handle(caller(task), post("/v1/chat/completions", chat()))
    error = json.loads(await body_of(answer))["error"]
    assert answer.status == 403
    assert error["code"] == "denied"
    assert "no budget applies to agent agent-1" in error["message"]
    assert "[models.tenants.default]" in error["message"]
    assert upstream.provider.calls == 0
    await gw.aclose()


async def test_a_call_cancelled_once_sent_is_charged_its_whole_reservation(
    daemon: Agent, upstream: Upstream, make_store: Any
) -> None:
    """The caller goes away while the provider is still thinking: the request was sent, so the provider may do
    (and bill) the work anyway; the call is charged its whole reservation (estimated). Before, it was released,
    and a workload could start calls and leave to have them for free."""
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 1_000}}))
    task = await assign(await make_store("scheduler"), daemon.host_id)
    upstream.provider.delay_s = 5.0
    call = asyncio.ensure_future(gw.handle(caller(task), post("/v1/chat/completions", chat())))
    for _ in range(100):  # the reservation is made and the request is at the provider
        await asyncio.sleep(0.05)
        if upstream.provider.calls:
            break
    state = await gw.ledger.state("default")
    assert len(state.open) == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    state = await usage_of(gw)
    assert not state.open
    usage = state.usage[("agent-1", "test/small")]
    assert (usage.calls, usage.output_tokens) == (1, 16)  # chat() asks for max_tokens 16
    await gw.aclose()


async def test_a_reservation_whose_ack_was_lost_is_used_once(
    daemon: Agent, upstream: Upstream, make_store: Any
) -> None:
    """The reservation landed but its append was not confirmed: the ledger finds it and the call goes on with it,
    so the day holds one reconciled call and no reservation left open (none held twice)."""
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 10_000}}))
    gw.ledger.store = AcksLost(gw.ledger.store, (BudgetReserved,), landed=True)  # type: ignore[assignment]
    task = await assign(await make_store("scheduler"), daemon.host_id)
    answer = await gw.handle(caller(task), post("/v1/chat/completions", chat()))
    assert answer.status == 200, await body_of(answer)
    state = await usage_of(gw)
    assert not state.open
    assert sum(u.calls for u in state.usage.values()) == 1
    assert upstream.provider.calls == 1
    await gw.aclose()


async def test_a_reservation_that_did_not_land_is_released_and_the_call_refused(
    daemon: Agent, upstream: Upstream, make_store: Any
) -> None:
    """The append was not confirmed and the reservation is not in the stored day: the call is refused as
    unavailable (retry later) before anything reaches the provider, and a release is stored for the reservation
    so that, should it land late, it holds nothing."""
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 10_000}}))
    gw.ledger.store = AcksLost(gw.ledger.store, (BudgetReserved,), landed=False)  # type: ignore[assignment]
    task = await assign(await make_store("scheduler"), daemon.host_id)
    answer = await gw.handle(caller(task), post("/v1/chat/completions", chat()))
    error = json.loads(await body_of(answer))["error"]
    assert answer.status == 503
    assert error["code"] == "unavailable"
    assert "could not be stored" in error["message"]
    assert upstream.provider.calls == 0
    day = aggregate_id(day_of(), "default")
    stored = await (await make_store("sandbox-agent")).load("budget", day, BUDGETS)
    assert [type(r.event).__name__ for r in stored] == ["BudgetReleased"]
    state = await usage_of(gw)
    assert not state.open
    assert not state.used
    await gw.aclose()


async def test_a_provider_refusing_the_key_does_not_echo_it(daemon: Agent, upstream: Upstream, make_store: Any) -> None:
    """Providers echo parts of a refused key in their error; the sandbox gets none of it."""
    gw = gateway(daemon.daemon.rt, models_settings(upstream.url, upstream.ca, {"default": {"tokens_per_day": 10_000}}))
    task = await assign(await make_store("scheduler"), daemon.host_id)
    upstream.provider.api_key = "another-key"  # the provider no longer accepts the host's: 401
    refused = await gw.handle(caller(task), post("/v1/chat/completions", chat()))
    text = await body_of(refused)
    assert refused.status == 502
    assert b"refused the host's credential" in text
    assert API_KEY.encode()[-8:] not in text
    two = await gw.handle(caller(task), post("/v1/chat/completions", b'{"model": "small", "messages": [], "n": 0}'))
    assert two.status == 400
    state = await usage_of(gw)
    assert not state.open
    await gw.aclose()
