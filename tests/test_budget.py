import pytest

from recursive_llm.engine.budget import Budget, Limits, prompt_token_bound
from recursive_llm.errors import BudgetExceeded

MESSAGES = [{"role": "user", "content": "x" * 100}]


def test_call_limit():
    budget = Budget(Limits(max_llm_calls=2))
    budget.reserve(MESSAGES, max_output_tokens=None, price=None)
    budget.reserve(MESSAGES, max_output_tokens=None, price=None)
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(MESSAGES, max_output_tokens=None, price=None)
    assert info.value.budget == "llm_calls" and budget.exhausted == "llm_calls"


def test_token_limit_caps_output_and_counts_reservations():
    bound = prompt_token_bound(MESSAGES)
    budget = Budget(Limits(max_tokens=bound + 100))
    reservation = budget.reserve(MESSAGES, max_output_tokens=1000, price=None)
    assert reservation.max_output_tokens == 100
    # While the first reservation is open, a second call cannot fit.
    with pytest.raises(BudgetExceeded):
        budget.reserve(MESSAGES, max_output_tokens=10, price=None)
    budget.settle(reservation, tokens=30, cost_usd=0.0)
    assert budget.tokens == 30


def test_cost_limit():
    budget = Budget(Limits(max_cost_usd=0.001))
    # $1 per 1M tokens in, $10 per 1M out: 108 prompt tokens cost 0.000108, leaving room for ~89 output tokens.
    reservation = budget.reserve(MESSAGES, max_output_tokens=None, price=(1.0, 10.0))
    assert 80 < reservation.max_output_tokens < 100
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(MESSAGES, max_output_tokens=None, price=(1.0, 10.0))
    assert info.value.budget == "cost"


def test_time_limit():
    now = [0.0]
    budget = Budget(Limits(timeout_s=10), clock=lambda: now[0])
    assert budget.cap_timeout(60) == 10
    now[0] = 11
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(MESSAGES, max_output_tokens=None, price=None)
    assert info.value.budget == "time"


def test_invalid_limits():
    with pytest.raises(ValueError):
        Limits(max_iterations=0)
    with pytest.raises(ValueError):
        Limits(max_tokens=-1)


# -- issue 15: budgets and parallel sub-calls ------------------------------------------------------
def test_a_budgeted_call_without_an_output_cap_reserves_a_plausible_reply_not_the_whole_budget():
    from recursive_llm.engine.budget import DEFAULT_OUTPUT_RESERVE

    budget = Budget(Limits(max_tokens=400_000))
    reservations = [budget.reserve(MESSAGES, max_output_tokens=None, price=None) for _ in range(13)]
    assert all(r.max_output_tokens == DEFAULT_OUTPUT_RESERVE for r in reservations)
    assert budget.exhausted is None
    cost_budget = Budget(Limits(max_cost_usd=5.0))
    priced = [cost_budget.reserve(MESSAGES, max_output_tokens=None, price=(0.25, 2.0)) for _ in range(13)]
    assert all(r.max_output_tokens == DEFAULT_OUTPUT_RESERVE for r in priced)


async def test_a_call_that_fits_once_the_calls_in_flight_settle_waits_for_them_instead_of_failing():
    import asyncio

    from recursive_llm.engine.budget import RoomLater

    bound = prompt_token_bound(MESSAGES)
    budget = Budget(Limits(max_tokens=2 * bound + 1000))
    first = budget.reserve(MESSAGES, max_output_tokens=None, price=None)  # takes all but ~bound
    with pytest.raises(RoomLater):  # not now...
        budget.reserve(MESSAGES, max_output_tokens=None, price=None)
    assert budget.exhausted is None
    waiting = asyncio.ensure_future(budget.areserve(MESSAGES, max_output_tokens=None, price=None))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    budget.settle(first, tokens=bound + 10, cost_usd=0.0)  # ...but once the first call has settled
    second = await asyncio.wait_for(waiting, 2)
    assert second.max_output_tokens is not None and second.max_output_tokens >= 16
    assert budget.tokens + second.tokens <= budget.limits.max_tokens


async def test_concurrent_calls_never_jointly_overshoot_and_the_last_one_is_refused():
    import asyncio

    bound = prompt_token_bound(MESSAGES)
    budget = Budget(Limits(max_tokens=10 * (bound + 100)))

    async def call() -> int:
        reservation = await budget.areserve(MESSAGES, max_output_tokens=None, price=None)
        await asyncio.sleep(0.01)
        used = bound + min(100, reservation.max_output_tokens)  # a reply that uses its cap fully
        budget.settle(reservation, tokens=used, cost_usd=0.0)
        return used

    results = await asyncio.gather(*(call() for _ in range(40)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert refused and budget.exhausted == "tokens"
    assert budget.tokens <= budget.limits.max_tokens


@pytest.mark.parametrize("field", ["max_llm_calls", "max_tokens", "max_cost_usd", "timeout_s", "max_iterations",
                                   "max_depth"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "5"])
def test_limits_refuse_non_finite_and_non_numbers(field, value):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


def test_whole_number_limits_refuse_fractions():
    with pytest.raises(ValueError, match="whole number"):
        Limits(max_llm_calls=2.5)


def test_a_number_check_shows_a_huge_value_shortened():
    """check_number names the setting and the value it refused, but a request body's value may be
    megabytes: the message shows at most 80 characters of it."""
    from recursive_llm.config import check_number

    with pytest.raises(ValueError, match="rlm.max_iterations must be a number, got str") as refused:
        check_number("rlm.max_iterations", "9" * 1_000_000, integer=True)
    assert len(str(refused.value)) < 200
