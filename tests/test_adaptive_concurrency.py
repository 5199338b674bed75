"""Adaptive concurrency per endpoint (scheduler.EndpointLimit): the fan-out width follows the
provider. Against the test server through the real openai client; no assertion on time."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from recursive_llm import RLM
from recursive_llm.engine.budget import Budget
from recursive_llm.config import Limits, RetryPolicy
from recursive_llm.errors import ModelError
from recursive_llm.record.events import EventLog, read_trajectory
from recursive_llm.models.openai_client import OpenAIClient
from recursive_llm.engine.scheduler import START_LIMIT, CallSite, EndpointLimit, Scheduler, endpoint_limit
from recursive_llm.testing import FakeLLMServer, ScriptedModel
from recursive_llm.usage import UsageSummary
from scripted_root import root_then_sub

SITE = CallSite("run", 1, "sub")


def scheduler(ceiling: int, retries: int = 8) -> Scheduler:
    return Scheduler(Budget(Limits()), EventLog(None), UsageSummary(), max_concurrency=ceiling,
                     retry=RetryPolicy(max_retries=retries, base_delay_s=0.05, max_delay_s=0.2))


async def fan_out(client: OpenAIClient, count: int, ceiling: int) -> list:
    sched = scheduler(ceiling)
    try:
        return await asyncio.gather(*(sched.call(client, [{"role": "user", "content": f"p{i}"}], SITE)
                                      for i in range(count)), return_exceptions=True)
    finally:
        await client.aclose()


def test_without_a_cap_the_width_grows_to_the_ceiling():
    with FakeLLMServer(latency=0.1) as server:
        client = OpenAIClient("m", base_url=server.base_url, api_key="uncapped")
        results = asyncio.run(fan_out(client, 300, ceiling=64))
        limit = endpoint_limit(client)
    assert all(not isinstance(r, BaseException) for r in results)
    assert limit.max_in_flight == 64  # started at START_LIMIT, reached the run's ceiling
    assert server.max_in_flight > START_LIMIT * 2  # (the client's CPU on 2 cores bounds what the server sees)
    assert limit.overloads == 0 and limit.in_flight == 0


def test_with_a_cap_of_8_few_requests_are_refused_after_warm_up():
    with FakeLLMServer(latency=0.05, max_concurrency=8) as server:
        client = OpenAIClient("m", base_url=server.base_url, api_key="capped")
        first = asyncio.run(fan_out(client, 100, ceiling=256))  # the first run finds the limit
        warm_requests, warm_rejected = server.request_count, server.rejected
        second = asyncio.run(fan_out(client, 300, ceiling=256))  # a later run starts from it
        requests, rejected = server.request_count - warm_requests, server.rejected - warm_rejected
        limit = endpoint_limit(client)
    assert all(not isinstance(r, BaseException) for r in [*first, *second])
    assert warm_rejected > 0  # the start (16) was above the cap: the limit had to come down
    assert rejected / requests <= 0.05, (rejected, requests)
    assert server.max_in_flight <= 9 + 8  # never far above the cap (refused requests are counted in flight)
    assert 1 <= limit.limit <= 12 and limit.in_flight == 0


def test_runs_on_different_event_loops_share_one_limit():
    with FakeLLMServer(latency=0.05, max_concurrency=8) as server:
        clients = [OpenAIClient("m", base_url=server.base_url, api_key="shared") for _ in range(3)]
        assert endpoint_limit(clients[0]) is endpoint_limit(clients[1])
        assert endpoint_limit(OpenAIClient("m", base_url=server.base_url, api_key="other")) is not \
            endpoint_limit(clients[0])
        asyncio.run(fan_out(clients[0], 60, ceiling=256))  # warm-up
        before_requests, before_rejected = server.request_count, server.rejected
        outcomes: list = []
        threads = [threading.Thread(target=lambda c=c: outcomes.extend(asyncio.run(fan_out(c, 150, ceiling=256))))
                   for c in clients[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        requests = server.request_count - before_requests
        rejected = server.rejected - before_rejected
    assert len(outcomes) == 300 and all(not isinstance(r, BaseException) for r in outcomes)
    assert rejected / requests <= 0.08, (rejected, requests)
    assert endpoint_limit(clients[0]).in_flight == 0


async def _batch_through(limit: EndpointLimit, count: int, latency: float = 0.02) -> int:
    """`count` calls of `latency` seconds started together through `limit`; the most in flight at once."""
    peak = 0

    async def one() -> None:
        nonlocal peak
        started = await limit.acquire()
        peak = max(peak, limit.in_flight)
        await asyncio.sleep(latency)
        limit.release(started, None)

    await asyncio.gather(*(one() for _ in range(count)))
    return peak


def test_a_repeated_batch_is_sent_in_one_wave_once_the_width_has_grown():
    """Slow start doubles the width once per round trip, up to what the calls ask for, so the width
    reaches a batch's size within a few runs. (Growing by one per success while calls waited only
    halved the shortfall on each run: a batch of 101 was still split in two waves after five runs.)"""
    async def scenario() -> list[int]:
        limit = EndpointLimit("unit-demand")
        return [await _batch_through(limit, 101) for _ in range(4)]

    peaks = asyncio.run(scenario())
    assert peaks[0] < peaks[1] < 101  # 16, 32, 64 in flight in the first run; 64 to start the second
    assert peaks[2] == peaks[3] == 101  # from then on the whole batch at once


def test_slow_start_doubles_per_round_trip_and_never_past_the_demand():
    async def scenario() -> tuple[int, float]:
        limit = EndpointLimit("unit-doubling", start=4)
        peak = await _batch_through(limit, 40)
        return peak, limit.limit

    peak, width = asyncio.run(scenario())
    assert peak > 4 and width <= 40  # grew while calls waited, and only as far as they asked


def test_an_overload_halves_the_limit_and_retry_after_pauses_new_starts():
    async def scenario():
        limit = EndpointLimit("unit", start=10)
        started = [await limit.acquire() for _ in range(4)]
        limit.release(started[0], ModelError("429", retryable=True, retry_after=30.0, status_code=429))
        assert limit.limit == 5 and not limit.slow_start
        # calls sent before the cut do not cut again (one cut per round trip)
        limit.release(started[1], ModelError("429", retryable=True, status_code=429))
        assert limit.limit == 5
        waiting = asyncio.ensure_future(limit.acquire())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # paused for the provider's Retry-After, though slots are free
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        limit.release(started[2], ModelError("500", retryable=True, status_code=500))  # not an overload
        assert limit.limit == 5
        limit.release(started[3], False)
        assert limit.in_flight == 0

    asyncio.run(scenario())


def test_the_calls_waiting_out_a_retry_after_resume_even_when_the_timer_fires_early():
    """A loop's timer may fire a little before its time: uvloop (which uvicorn uses when it is
    installed) counts in milliseconds. The end of a Retry-After pause must still wake the calls
    queued behind it. (It did not: `rlm serve` on uvloop hung for good on a provider's 429s.)"""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        on_time = loop.call_later
        loop.call_later = lambda delay, callback, *args: on_time(max(0.0, delay - 0.005), callback, *args)
        limit = EndpointLimit("unit-early-timer", start=1)
        first = await limit.acquire()
        waiting = asyncio.ensure_future(limit.acquire())  # queued: the only slot is taken
        await asyncio.sleep(0)
        limit.release(first, ModelError("429", retryable=True, retry_after=0.05, status_code=429))
        started = await asyncio.wait_for(waiting, 5)  # the slot, once the pause is over
        assert time.monotonic() >= limit._paused_until
        limit.release(started, None)
        assert limit.in_flight == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_does_not_keep_a_slot():
    async def scenario():
        limit = EndpointLimit("unit-cancel", start=1)
        first = await limit.acquire()
        waiter = asyncio.ensure_future(limit.acquire())
        await asyncio.sleep(0)
        limit.release(first, None)  # hands the slot to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0)
        assert limit.in_flight == 0
        again = await asyncio.wait_for(limit.acquire(), 5)
        limit.release(again, None)
        assert limit.in_flight == 0

    asyncio.run(scenario())


def test_in_process_models_are_bounded_only_by_max_concurrency():
    sub = ScriptedModel(default=lambda m: "x", name="sub")
    assert endpoint_limit(sub) is None


def test_the_call_budget_still_holds_at_a_wide_fan_out():
    code = "r = llm_query_batched([f'#{i}' for i in range(60)])\nprint(sum(x.startswith('sub:') for x in r))"
    turns = ["```repl\n" + code + "\n```", "FINAL(done)"]
    with FakeLLMServer(responder=root_then_sub(turns), latency=0.02) as server:
        result = RLM(model="m", base_url=server.base_url, api_key="budgeted", max_llm_calls=20,
                     max_concurrency=256).completion("q", "text")
        assert server.request_count <= 20
    assert result.usage.total.calls <= 20 and result.stopped_reason.value == "budget"


def test_a_batch_runs_in_lanes_each_prompt_once_and_in_order():
    """subcalls.in_lanes: at most `width` calls at once, every item exactly once, the replies in
    the items' order however the calls finish; and a batch through a run really is that wide."""
    from recursive_llm.engine.subcalls import Reply, in_lanes

    running, peak, seen = 0, 0, []

    async def call(item: str) -> Reply:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        seen.append(item)
        await asyncio.sleep(0.001 * (int(item) % 7))  # finishing out of order
        running -= 1
        return Reply(text=f"r{item}")

    items = [str(i) for i in range(200)]
    replies = asyncio.run(in_lanes(items, 16, call))
    assert [reply.text for reply in replies] == [f"r{i}" for i in range(200)]
    assert sorted(seen, key=int) == items and peak == 16
    assert asyncio.run(in_lanes(["1", "2"], 16, call))[1].text == "r2" and peak == 16  # fewer items than lanes

    code = "r = llm_query_batched([f'#{i}' for i in range(40)])\nprint(sum(x.startswith('sub:') for x in r))"
    with FakeLLMServer(responder=root_then_sub(["```repl\n" + code + "\n```", "FINAL(done)"]), latency=0.05) as server:
        result = RLM(model="m", base_url=server.base_url, api_key="lanes", max_concurrency=5).completion("q", "text")
    events = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "llm_start" and e["purpose"] == "sub"]
    assert result.answer == "done" and len(events) == 40 and max(e["in_flight"] for e in events) == 5


def _straggler_server(seen: list[str], slow: int = 1, prompts: int = 20) -> FakeLLMServer:
    """Sub-prompt '#7' straggles the first `slow` times it is asked (2 s) and answers 'first' (then
    'second'); asked again, it answers at once ('second', then 'third'); the other prompts at once."""
    lock = threading.Lock()
    code = f"r = llm_query_batched([f'#{{i}}' for i in range({prompts})])\nprint(r[7], r[6])"
    root = root_then_sub(["```repl\n" + code + "\n```", "FINAL(done)"])

    def respond(messages: list[dict], model: str) -> str:
        prompt = messages[-1]["content"]
        if prompt != "#7":
            return root(messages, model)
        with lock:
            seen.append(prompt)
            asked = len(seen)
        if asked <= slow:
            time.sleep(2.0)
        return "sub:" + ("first", "second", "third")[asked - 1]

    return FakeLLMServer(responder=respond, latency=0.05)


@pytest.mark.parametrize("hedge_after", [None, 3.0])
def test_a_straggling_sub_call_is_sent_again_and_the_first_answer_wins(hedge_after):
    """Issue 31 (2): with `hedge_after`, a sub-call with no answer after that many times the
    endpoint's usual latency (while it has free slots) is sent once more; the answer that comes first
    is the call's. Which request answered is in the reply's text, not in a timing."""
    seen: list[str] = []
    with _straggler_server(seen) as server:
        result = RLM(model="m", base_url=server.base_url, api_key=f"hedge-{hedge_after}",
                     hedge_after=hedge_after).completion("q", "text")
        requests = server.request_count
    events = list(read_trajectory(result.trajectory_path))
    output = next(e["stdout"] for e in events if e["type"] == "cell")
    hedges = [e for e in events if e["type"] == "llm_hedge"]
    if hedge_after is None:
        assert output.strip() == "sub:first sub:#6" and seen == ["#7"] and hedges == []
    else:
        assert output.strip() == "sub:second sub:#6" and seen == ["#7", "#7"]
        assert len(hedges) == 1 and hedges[0]["purpose"] == "sub"
    assert result.answer == "done" and requests == 2 + 20 + (hedge_after is not None)
    assert result.usage.total.calls == 22  # the cancelled request's usage is not known (SECURITY.md)


def test_a_copy_that_straggles_too_is_sent_once_more():
    """A straggler whose first copy straggles as well (it drew the tail too) is sent a third time,
    and no more: HEDGES_PER_CALL copies; the third request's answer wins (40 sub-calls: 5% are 2)."""
    seen: list[str] = []
    with _straggler_server(seen, slow=2, prompts=40) as server:
        result = RLM(model="m", base_url=server.base_url, api_key="hedge-twice",
                     hedge_after=3.0).completion("q", "text")
    output = next(e["stdout"] for e in read_trajectory(result.trajectory_path) if e["type"] == "cell")
    assert output.strip() == "sub:third sub:#6" and seen == ["#7"] * 3 and result.usage.total.hedged == 2


def test_hedge_after_below_one_is_refused():
    from recursive_llm.errors import ConfigError

    with pytest.raises(ConfigError, match="hedge_after"):
        RLM(model=ScriptedModel(["FINAL(x)"]), hedge_after=0.5)


def test_the_usual_latency_is_a_median_and_a_full_endpoint_has_no_room_for_a_hedge():
    async def scenario() -> tuple[float | None, float | None, bool, bool]:
        limit = EndpointLimit("unit-hedge", start=2)
        before = limit.usual_latency()
        for latency in (0.1, 0.1, 0.1, 5.0):  # one straggler does not move the median
            limit.release(await limit.acquire(), None, latency=latency)
        slots = [await limit.acquire(), await limit.acquire()]
        full = limit.has_room()
        for started in slots:
            limit.release(started, False)
        return before, limit.usual_latency(), full, limit.has_room()

    before, usual, full, free = asyncio.run(scenario())
    assert before is None and usual == 0.1 and not full and free


def _many_stragglers_server(stragglers: int, prompts: int) -> FakeLLMServer:
    """Sub-prompts '#0'..'#{stragglers-1}' take 1.5 s the first time they are asked, at once after."""
    lock = threading.Lock()
    asked: set[str] = set()
    code = f"r = llm_query_batched([f'#{{i}}' for i in range({prompts})])\nprint(len(r))"
    root = root_then_sub(["```repl\n" + code + "\n```", "FINAL(done)"])

    def respond(messages: list[dict], model: str) -> str:
        prompt = messages[-1]["content"]
        if prompt.startswith("#") and int(prompt[1:]) < stragglers:
            with lock:
                first, _ = prompt not in asked, asked.add(prompt)
            if first:
                time.sleep(1.5)
        return root(messages, model)

    return FakeLLMServer(responder=respond, latency=0.05)


def test_hedges_are_at_most_five_percent_of_the_sub_calls_and_counted_in_the_usage():
    """Issue 31 (2): 10 of 40 sub-calls straggle, but a run hedges at most 5% of the sub-calls it has
    sent (2 of 40); the usage says how many were hedged, per model and per depth."""
    with _many_stragglers_server(10, 40) as server:
        result = RLM(model="m", base_url=server.base_url, api_key="hedge-share",
                     hedge_after=2.0).completion("q", "text")
        requests = server.request_count
    hedges = [e for e in read_trajectory(result.trajectory_path) if e["type"] == "llm_hedge"]
    usage = result.usage.to_dict()
    assert result.answer == "done" and 1 <= len(hedges) <= 2 and requests == 2 + 40 + len(hedges)
    assert usage["total"]["hedged"] == usage["by_model"]["m"]["hedged"] == len(hedges)
    assert usage["by_depth"]["1"]["hedged"] == len(hedges) and usage["by_depth"]["0"]["hedged"] == 0
    from recursive_llm.cli.support import _summary  # the CLI's summary line; --json prints result.to_dict()

    assert f" · {len(hedges)} hedged" in _summary(result) and result.to_dict()["usage"] == usage


@pytest.mark.parametrize("max_llm_calls", [21, 23])
def test_a_hedge_is_sent_only_when_the_budget_has_room_for_it(max_llm_calls):
    """Both requests count in the budget: with room for the root's first call and the 20 sub-calls and
    no more, the straggler is not hedged (the refused hedge is no refused call: only the root's next
    call is refused); with room for one more request and the root's second call, it is hedged."""
    seen: list[str] = []
    with _straggler_server(seen) as server:
        result = RLM(model="m", base_url=server.base_url, api_key=f"hedge-room-{max_llm_calls}",
                     hedge_after=3.0, max_llm_calls=max_llm_calls).completion("q", "text")
    events = list(read_trajectory(result.trajectory_path))
    output = next(e["stdout"] for e in events if e["type"] == "cell")
    refused = {e["purpose"] for e in events if e["type"] == "llm_refused"}
    hedged = max_llm_calls == 23
    assert output.strip() == ("sub:second sub:#6" if hedged else "sub:first sub:#6")
    assert result.usage.total.hedged == int(hedged) and seen == ["#7"] * (1 + hedged)
    assert (result.answer, refused) == (("done", set()) if hedged else (None, {"root", "final"}))


def test_a_hedge_never_takes_the_call_the_root_needs_to_answer():
    """With max_llm_calls=22 there is room for the root's first call, the 20 sub-calls and one more:
    that one is the root's second reply (its answer), so the straggler is not hedged
    (HEDGE_KEEPS_CALLS) and the run answers."""
    seen: list[str] = []
    with _straggler_server(seen) as server:
        result = RLM(model="m", base_url=server.base_url, api_key="hedge-keeps-root",
                     hedge_after=3.0, max_llm_calls=22).completion("q", "text")
    events = list(read_trajectory(result.trajectory_path))
    assert [e for e in events if e["type"] in ("llm_hedge", "llm_refused")] == []
    assert result.answer == "done" and result.usage.total.hedged == 0 and seen == ["#7"]


def test_a_request_cancelled_in_flight_is_settled_at_its_prompt_and_a_spare_refusal_exhausts_nothing():
    """A hedge's cancelled copy counts in max_tokens/max_cost_usd at its prompt's worst case (a
    provider may bill it), never at 0; a spare (hedge) reservation that does not fit marks nothing."""
    from recursive_llm.engine.budget import prompt_token_bound
    from recursive_llm.errors import BudgetExceeded

    class Hanging(ScriptedModel):
        async def complete(self, messages, **kwargs):
            await asyncio.sleep(60)

    messages = [{"role": "user", "content": "x" * 100}]
    budget = Budget(Limits(max_tokens=100_000))

    async def scenario() -> None:
        scheduler = Scheduler(budget, EventLog(None), UsageSummary())
        site = CallSite(run_id="r", depth=1, purpose="sub")
        task = asyncio.ensure_future(scheduler.call(Hanging([]), messages, site, max_output_tokens=50))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert budget.tokens == prompt_token_bound(messages) and budget.snapshot()["calls"] == 1
    tight = Budget(Limits(max_tokens=prompt_token_bound(messages) + 10))
    with pytest.raises(BudgetExceeded):
        tight.reserve(messages, max_output_tokens=50, price=None, spare=True)
    assert tight.exhausted is None and tight.calls == 0
