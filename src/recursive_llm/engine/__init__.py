"""The run loop and what it uses: sub-calls, scheduling, budgets, prompts, parsing, answers, tools, memory."""
