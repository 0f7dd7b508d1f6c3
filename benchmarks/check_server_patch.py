"""Does patches/llama-server-graph-top-k.patch change any answer? It should not, where it applies.

    python benchmarks/check_server_patch.py PATH/TO/llama-server MODEL.gguf [llama-server flags, e.g. -ngl 99]

Starts the patched llama-server twice, without and with LLAMA_SERVER_GRAPH_TOP_K=40 (what the bot
sets on a GPU), asks both the same questions with fixed seeds (greedy, sampled hot and cool, a banned
token, and requests the switch must leave to the CPU: top_k 0, token probabilities) and prints
whether each answer is identical. Exit status 1 if any differs.
"""

import json
import os
import sys
import urllib.request

from llama_server import start_llama_server  # benchmarks/, this script's folder

QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name three colours and say why the sky is blue."}]
CASES = {
    "greedy": dict(temperature=0),
    "sampled": dict(temperature=0.8, top_p=0.95),
    "sampled, a token banned": dict(temperature=0.8, top_p=0.95, logit_bias={"2": -100}),
    **{f"hot, seed {i}": dict(temperature=1.4, top_p=0.99, min_p=0.0, seed=i) for i in range(10)},
    "top_k 0 (left to the CPU)": dict(temperature=0.8, top_k=0),
    "token probabilities (left to the CPU)": dict(temperature=0.8, n_probs=3),
    "sampled after those": dict(temperature=1.0, top_p=0.9, seed=11),
}


def ask(port: int, options: dict) -> str:
    body = {"messages": QUESTION, "max_tokens": 48, "seed": 7, **options}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def main() -> None:
    binary, model, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
    answers = []
    for env in ({}, {"LLAMA_SERVER_GRAPH_TOP_K": "40"}):
        process, port = start_llama_server([binary, "-m", model, "-np", "2", "-c", "4096", "--jinja", "--no-webui",
                                            *flags], dict(os.environ, **env))
        try:
            answers.append({name: ask(port, options) for name, options in CASES.items()})
        finally:
            process.terminate()
            process.wait()
    differ = [name for name in CASES if answers[0][name] != answers[1][name]]
    for name in CASES:
        print(f"{name}: {'DIFFERENT' if name in differ else 'same'}: {answers[1][name][:60]!r}")
    print(f"{len(CASES) - len(differ)} of {len(CASES)} answers identical with LLAMA_SERVER_GRAPH_TOP_K=40")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
