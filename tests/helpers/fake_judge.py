"""A fake OpenAI-compatible judge on loopback: POST /v1/chat/completions, deterministic replies in several formats.

Reply rule, from the user message's "Correct answer:" and "Predicted answer:" lines (the pinned prompt's layout):
  - the normalised prediction contains the normalised reference  -> '{"pred": "yes", "score": 5}'
  - else, reference starts with "blue"                           -> 'Verdict: no. Score: 2'       (labelled text)
  - else, reference starts with "green"                          -> 'I am not sure about this one.' (unreadable)
  - else                                                         -> "```json\n{'pred': 'no', 'score': 1}\n```"
A reference starting with "flaky" fails with HTTP 500 on its first request (a retry then succeeds).

Standalone (for the plumbing check in docs/evaluation.md): python -m tests.helpers.fake_judge PORT
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVED_MODEL = "fake-judge-v0"


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", s.lower()).split())


def verdict_for(reference: str, prediction: str) -> str:
    if _norm(reference) and _norm(reference) in _norm(prediction):
        return '{"pred": "yes", "score": 5}'
    if reference.lower().startswith("blue"):
        return "Verdict: no. Score: 2"
    if reference.lower().startswith("green"):
        return "I am not sure about this one."
    return "```json\n{'pred': 'no', 'score': 1}\n```"


class FakeJudge:
    def __init__(self, port: int = 0):
        self.requests: list[dict] = []  # every request body received
        self._failed: set[str] = set()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append(body)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": f"no route {self.path}"})
                user = body["messages"][-1]["content"]
                ref = re.search(r"^Correct answer: (.*)$", user, re.M).group(1)
                pred = re.search(r"^Predicted answer: (.*)$", user, re.M).group(1)
                if ref.startswith("flaky") and ref not in judge._failed:
                    judge._failed.add(ref)
                    return self._send(500, {"error": "temporarily overloaded"})
                self._send(200, {"id": "x", "object": "chat.completion", "model": SERVED_MODEL,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": verdict_for(ref, pred)}}]})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    import sys
    import time

    j = FakeJudge(int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
    print(f"fake judge on {j.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        j.close()
