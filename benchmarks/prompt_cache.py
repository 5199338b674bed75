"""What provider prompt caching saves on a 10-iteration root conversation (issue 14, item 4).

The root model is the test server (FakeLLMServer) with its model of the providers' prompt caches
(`PromptCache`: OpenAI's automatic prefix cache, Anthropic's `cache_control` marks), priced like
gpt-5-mini and claude-sonnet-4-5. Each run: 10 root iterations, each printing about 2,000
characters, then FINAL. "Without caching" is the same run against a server without the cache (for
Anthropic: our client not marking the prefix). Costs are deterministic (token counts, not time).

    python benchmarks/prompt_cache.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ITERATIONS = 10


def root_responder(messages, model) -> str:
    turns = sum(1 for m in messages if m["role"] == "assistant")
    if turns >= ITERATIONS - 1:
        return "FINAL(done)"
    return f"```repl\nprint('line {turns} ' * 200)\n```"


def run(model: str, cache: bool, home: Path) -> dict:
    from recursive_llm import RLM
    from recursive_llm.models.anthropic_client import AnthropicClient
    from recursive_llm.testing import FakeLLMServer

    with FakeLLMServer(responder=root_responder, prompt_cache=True if cache or "claude" in model else False) as server:
        if "claude" in model:
            client = AnthropicClient(model.split("/")[-1], base_url=server.base_url.removesuffix("/v1"),
                                     api_key="sk-bench-0123456789", name=model, prompt_cache=cache)
            rlm = RLM(model=client, trajectory_dir=home, store=None)
        else:
            rlm = RLM(model=model, base_url=server.base_url, api_key="sk-bench-0123456789", trajectory_dir=home,
                      store=None)
        result = rlm.completion("Print ten things, then say done.", "some input text " * 100)
        total = result.usage.total
        return {"iterations": result.iterations, "prompt": total.prompt_tokens, "cached": total.cached_prompt_tokens,
                "written": total.cache_write_tokens, "cost": result.cost_usd,
                "server_cached": server.prompt_cache.cached_tokens if server.prompt_cache else 0}


def main() -> None:
    import tempfile

    print("| root model (priced as) | prompt tokens | cached (read) | cache writes | cost without caching | "
          "cost with caching | saving |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as home:
        for model in ("gpt-5-mini", "anthropic/claude-sonnet-4-5"):
            without, with_ = run(model, False, Path(home)), run(model, True, Path(home))
            assert with_["cached"] == with_["server_cached"], (with_, "our count differs from the server's")
            saving = 1 - with_["cost"] / without["cost"]
            print(f"| {model} | {with_['prompt']:,} | {with_['cached']:,} | {with_['written']:,} | "
                  f"${without['cost']:.5f} | ${with_['cost']:.5f} | {saving:.0%} |")


if __name__ == "__main__":
    main()
