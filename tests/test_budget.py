import pytest

from recursive_llm.budget import Budget, Limits, prompt_token_bound
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
