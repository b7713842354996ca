"""A scriptable OpenAI-compatible chat server on 127.0.0.1, for testing judges over real HTTP.

Each request takes the next queued action, or `default(body)` when the queue is empty:

- ("logprobs", [(token, logprob), ...]): first token sampled, those as its top logprobs;
- ("content", text): a sampled answer without logprobs;
- ("status", code) or ("status", code, headers): an error response;
- ("sleep", seconds): answer late (after the default's answer), to trip client timeouts.

It records every request (body and headers) and the most requests ever in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = tuple


def default_action(body: dict[str, Any]) -> Action:
    return ("logprobs", [("50", 0.0)]) if body.get("logprobs") else ("content", "50")


class OpenAIStub:
    def __init__(self) -> None:
        self.actions: deque[Action] = deque()
        self.default: Callable[[dict[str, Any]], Action] = default_action
        self.usage = (100, 1)
        """(prompt_tokens, completion_tokens) reported by every successful response."""
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r["body"] for r in self.requests]

    def queue(self, *actions: Action) -> None:
        with self._lock:
            self.actions.extend(actions)

    def start(self) -> OpenAIStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_action(self, body: dict[str, Any], headers: dict[str, str]) -> Action:
        with self._lock:
            self.requests.append({"body": body, "headers": headers})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.actions:
                return self.actions.popleft()
        return self.default(body)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def completion(self, body: dict[str, Any], content: str, top: list[tuple[str, float]] | None) -> dict:
        logprobs = None
        if top is not None:
            entries = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]
            logprobs = {"content": [{**entries[0], "top_logprobs": entries}]}
        prompt_tokens, completion_tokens = self.usage
        return {
            "id": f"chatcmpl-stub-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _handler(stub: OpenAIStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            action = stub._next_action(body, {k.lower(): v for k, v in self.headers.items()})
            try:
                self._act(body, action)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to answer
            finally:
                stub._done()

        def _act(self, body: dict[str, Any], action: Action) -> None:
            kind = action[0]
            if kind == "sleep":
                time.sleep(action[1])
                self._act(body, stub.default(body))
            elif kind == "status":
                headers = action[2] if len(action) > 2 else {}
                error = {"message": f"stub error {action[1]}", "type": "stub_error", "code": None}
                self._send(action[1], {"error": error}, headers)
            elif kind == "logprobs":
                self._send(200, stub.completion(body, action[1][0][0], list(action[1])))
            elif kind == "content":
                self._send(200, stub.completion(body, action[1], None))
            else:
                raise ValueError(f"unknown stub action {action!r}")

        def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

    return Handler
