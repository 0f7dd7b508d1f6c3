"""Does patches/llama-server-graph-top-k.patch change any answer? It should not, where it applies.

    python benchmarks/check_server_patch.py PATH/TO/llama-server MODEL.gguf [llama-server flags, e.g. -ngl 99]

Starts the patched llama-server twice, without and with LLAMA_SERVER_GRAPH_TOP_K=40 (what the bot
sets on a GPU), asks both the same questions with fixed seeds (greedy, sampled hot and cool, the greedy
answer's first token banned, and requests the switch must leave to the CPU: top_k 0, token
probabilities) and prints whether each answer is identical. Exit status 1 if any differs.
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
    **{f"hot, seed {i}": dict(temperature=1.4, top_p=0.99, min_p=0.0, seed=i) for i in range(10)},
    "top_k 0 (left to the CPU)": dict(temperature=0.8, top_k=0),
    "token probabilities (left to the CPU)": dict(temperature=0.8, n_probs=3),
    "sampled after those": dict(temperature=1.0, top_p=0.9, seed=11),
}


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def ask(port: int, options: dict) -> str:
    body = {"messages": QUESTION, "max_tokens": 48, "seed": 7, **options}
    return post(port, "/v1/chat/completions", body)["choices"][0]["message"]["content"]


def answers(port: int) -> dict[str, str]:
    got = {name: ask(port, options) for name, options in CASES.items()}
    first_token = post(port, "/tokenize", {"content": got["greedy"]})["tokens"][:1]
    got["greedy, its first token banned"] = ask(port, {"temperature": 0, "logit_bias": [[t, False] for t in first_token]})
    return got


def without_and_with(binary: str, model: str, flags: list[str]) -> list[dict[str, str]]:
    """The answers of the patched llama-server without the switch, then with it."""
    runs = []
    for env in ({}, {"LLAMA_SERVER_GRAPH_TOP_K": "40"}):
        process, port = start_llama_server([binary, "-m", model, "-np", "2", "-c", "4096", "--jinja", "--no-webui",
                                            *flags], dict(os.environ, **env))
        try:
            runs.append(answers(port))
        finally:
            process.terminate()
            process.wait()
    return runs


def main() -> None:
    runs = without_and_with(sys.argv[1], sys.argv[2], sys.argv[3:])
    differ = [name for name in runs[0] if runs[0][name] != runs[1][name]]
    for name in runs[0]:
        print(f"{name}: {'DIFFERENT' if name in differ else 'same'}: {runs[1][name][:60]!r}")
    print(f"{len(runs[0]) - len(differ)} of {len(runs[0])} answers identical with LLAMA_SERVER_GRAPH_TOP_K=40")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
