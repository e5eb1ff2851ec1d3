"""A stand-in for Anthropic's Messages API (and OpenAI's chat completions) on 127.0.0.1.

It answers like the real services, at their speed: ``POST /v1/messages`` with a forced
``tool_use`` block (or a ``text/event-stream`` of message_start, content_block_start,
input_json_delta deltas as they are generated, ..., message_stop when the client asks to
stream), and
``POST /v1/chat/completions`` with a ``json_schema`` answer; both with ``usage``. An answer
takes ``first_token`` seconds plus one token per 1/``tokens_per_second`` s, ``prompt_tokens``
output tokens per prompt. Billing is counted here, on the provider's side: the output
tokens each call actually generated, including calls that failed or were cut off.

Chosen calls (by their number, 1-based, in arrival order) answer 429 with a Retry-After,
529 overloaded, or fail half way through (an ``overloaded_error`` after generating half
their tokens, billed). Prompts are distinct across every call (a server-wide counter) and
include the theme text as sent, in any script.

    with FakeLLMServer(tokens_per_second=700, first_token=0.04) as server:
        os.environ["ANTHROPIC_BASE_URL"] = server.url
        ...
        server.billed_output_tokens, server.calls
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A prompt with its alt text, as Claude writes them: about 140 output tokens.
PROMPT_TOKENS = 140
# Scenes the fake varies its prompts with, so they read like prompts (any script's theme
# is quoted as sent).
# A streamed tool input arrives in deltas of about this many tokens.
CHUNK_TOKENS = 12
ERROR_TYPES = {429: "rate_limit_error", 529: "overloaded_error", 500: "api_error"}
SCENES = ["at dawn", "under rain", "in fog", "at night", "in snow", "at noon", "by lamplight"]


@dataclass
class Fault:
    """What a chosen call does instead of answering: ``status`` (429, 529, 500) at once
    with ``retry_after`` (seconds, as a string: sent as is), or ``midway``: an error after
    half its tokens (billed)."""

    status: int = 529
    retry_after: str | None = None
    midway: bool = False


@dataclass
class LLMCall:
    number: int
    api: str  # "anthropic" or "openai"
    started: float  # time.time()
    ended: float = 0.0
    asked: int = 0  # prompts the call asked for
    prompts: int = 0  # prompts answered
    output_tokens: int = 0  # generated, so billed (a failed call's too)
    status: int = 200
    theme: str = ""
    texts: list[str] = field(default_factory=list)
    streamed: bool = False
    system: str = ""  # the instructions the call was sent with
    schema: dict = field(default_factory=dict)  # the JSON schema its answer must follow


class FakeLLMServer:
    def __init__(
        self,
        *,
        tokens_per_second: float = 700.0,
        first_token: float = 0.04,
        prompt_tokens: int = PROMPT_TOKENS,
        input_tokens: int = 900,
        faults: dict[int, Fault] | None = None,
        duplicates: int = 0,
    ):
        self.tokens_per_second = tokens_per_second
        self.first_token = first_token
        self.prompt_tokens = prompt_tokens
        self.input_tokens = input_tokens
        self.faults = dict(faults or {})
        # Each call of 10 prompts or more repeats this many prompts of the call before it
        # (an LLM repeating itself): the pipeline must drop them and top up.
        self.duplicates = duplicates
        self.calls: list[LLMCall] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._last_texts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                if self.path.rstrip("/").endswith("/v1/messages"):
                    server._messages(self, body)
                elif self.path.rstrip("/").endswith("/chat/completions"):
                    server._completions(self, body)
                else:
                    server._send(
                        self,
                        404,
                        {
                            "type": "error",
                            "error": {"type": "not_found_error", "message": self.path},
                        },
                    )

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # Figures -------------------------------------------------------------------------
    @property
    def billed_output_tokens(self) -> int:
        with self._lock:
            return sum(call.output_tokens for call in self.calls)

    @property
    def first_call_at(self) -> float | None:
        with self._lock:
            return min((call.started for call in self.calls), default=None)

    def prompts_sent(self) -> list[str]:
        with self._lock:
            # A stream cut off midway delivered its complete prompts all the same.
            return [text for call in self.calls for text in call.texts]

    # Answers -------------------------------------------------------------------------
    def _start(
        self, api: str, user: str, system: str = "", schema: dict | None = None
    ) -> tuple[LLMCall, int, str]:
        theme = _match(r"^Theme: (.*)$", user) or "untitled"
        count = int(_match(r"Write exactly (\d+) prompts", user) or 1)
        with self._lock:
            call = LLMCall(
                len(self.calls) + 1,
                api,
                time.time(),
                theme=theme,
                asked=count,
                system=system,
                schema=schema or {},
            )
            self.calls.append(call)
        return call, count, theme

    def _items(self, count: int, theme: str) -> list[dict]:
        """The call's prompts (distinct across calls, or repeats of the call before)."""
        items = []
        with self._lock:
            repeats = self._last_texts[: self.duplicates] if count >= 10 else []
            for text in repeats[:count]:
                items.append({"prompt": text, "alt_text": f"{theme}: a repeated scene"})
            while len(items) < count:
                self._counter += 1
                n = self._counter
                items.append(
                    {
                        "prompt": f"{theme} — scene {n}, {SCENES[n % len(SCENES)]}, seen from "
                        f"viewpoint {n * 7919 % 1000}, soft light, detailed",
                        "alt_text": f"{theme}: scene {n} {SCENES[n % len(SCENES)]}",
                    }
                )
            self._last_texts = [item["prompt"] for item in items]
        return items

    def _generate(self, call: LLMCall, count: int, theme: str) -> list[dict]:
        """The call's prompts, after the time it takes to write them (billed as written)."""
        items = self._items(count, theme)
        time.sleep(self.first_token + count * self.prompt_tokens / self.tokens_per_second)
        return items

    def _fault(self, handler, call: LLMCall, count: int) -> bool:
        fault = self.faults.get(call.number)
        if fault is None or fault.midway and call.streamed:
            return False  # a stream fails midway inside the stream, as an SSE error event
        call.status = fault.status
        if fault.midway:  # half the tokens generated, then the error: billed
            half = count * self.prompt_tokens // 2
            time.sleep(self.first_token + half / self.tokens_per_second)
            call.output_tokens = half
        headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
        kind = ERROR_TYPES.get(fault.status, "api_error")
        self._send(
            handler,
            fault.status,
            {
                "type": "error",
                "error": {"type": kind, "message": f"fake {kind} on call {call.number}"},
            },
            headers,
        )
        call.ended = time.time()
        return True

    def _messages(self, handler, body: dict) -> None:
        user = _text(body["messages"][0]["content"])
        tools = body.get("tools") or [{}]
        call, count, theme = self._start(
            "anthropic", user, _text(body.get("system", "")), tools[0].get("input_schema")
        )
        call.streamed = bool(body.get("stream"))
        if self._fault(handler, call, count):
            return
        tool = body.get("tool_choice", {}).get("name") or body["tools"][0]["name"]
        if call.streamed:
            self._stream(handler, call, tool, self._items(count, theme))
            call.ended = time.time()
            return
        items = self._generate(call, count, theme)
        call.prompts, call.texts = count, [item["prompt"] for item in items]
        call.output_tokens = count * self.prompt_tokens
        usage = {"input_tokens": self.input_tokens, "output_tokens": call.output_tokens}
        self._send(
            handler,
            200,
            {
                "id": f"msg_{call.number}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "claude"),
                "stop_reason": "tool_use",
                "stop_sequence": None,
                "usage": usage,
                "content": [
                    {
                        "type": "tool_use",
                        "id": f"toolu_{call.number}",
                        "name": tool,
                        "input": {"prompts": items},
                    }
                ],
            },
        )
        call.ended = time.time()

    def _stream(self, handler, call: LLMCall, tool: str, items: list[dict]) -> None:
        """The answer as server-sent events, written as it is generated: the tool input's
        JSON in ``input_json_delta`` chunks of about CHUNK_TOKENS tokens each, one token
        every 1/tokens_per_second s after the first. A call chosen to fail midway sends an
        SSE ``error`` event after half its tokens (on the 200 response, as the API does)."""
        payload = json.dumps({"prompts": items}, ensure_ascii=False)
        total = len(items) * self.prompt_tokens
        fault = self.faults.get(call.number)
        stop_at = total // 2 if fault and fault.midway else total
        # Characters of the JSON per token: the prompts' tokens spread over the text.
        per_token = len(payload) / max(1, total)
        started = time.monotonic() + self.first_token
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()

        def send(name: str, event: dict) -> None:
            raw = f"event: {name}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
            handler.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            handler.wfile.flush()

        try:
            send(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": f"msg_{call.number}",
                        "type": "message",
                        "role": "assistant",
                        "model": "claude",
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": self.input_tokens, "output_tokens": 1},
                    },
                },
            )
            time.sleep(max(0.0, started - time.monotonic()))
            send(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {
                        "type": "tool_use",
                        "id": f"toolu_{call.number}",
                        "name": tool,
                        "input": {},
                    },
                },
            )
            tokens = sent = 0
            while tokens < stop_at:
                tokens = min(stop_at, tokens + CHUNK_TOKENS)
                end = len(payload) if tokens == total else round(tokens * per_token)
                # Billed as generated, even if the client goes away before the next chunk.
                call.output_tokens = tokens
                time.sleep(max(0.0, started + tokens / self.tokens_per_second - time.monotonic()))
                send(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": payload[sent:end]},
                    },
                )
                call.texts = _complete_prompts(payload[:end])
                call.prompts = len(call.texts)
                sent = end
            if stop_at < total:
                call.status = fault.status
                kind = ERROR_TYPES.get(fault.status, "api_error")
                send(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": kind, "message": f"fake {kind} on call {call.number}"},
                    },
                )
            else:
                send("content_block_stop", {"type": "content_block_stop", "index": 0})
                send(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                        "usage": {"output_tokens": total},
                    },
                )
                send("message_stop", {"type": "message_stop"})
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            call.status = 499  # the client closed the stream: generation stops there
        handler.close_connection = True

    def _completions(self, handler, body: dict) -> None:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        system = "".join(m["content"] for m in body["messages"] if m["role"] == "system")
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema")
        call, count, theme = self._start("openai", user, system, schema)
        if self._fault(handler, call, count):
            return
        items = self._generate(call, count, theme)
        call.prompts, call.texts = count, [item["prompt"] for item in items]
        call.output_tokens = count * self.prompt_tokens
        self._send(
            handler,
            200,
            {
                "id": f"chatcmpl-{call.number}",
                "object": "chat.completion",
                "model": body.get("model", "gpt"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {
                            "role": "assistant",
                            "content": json.dumps({"prompts": items}, ensure_ascii=False),
                        },
                    }
                ],
                "usage": {
                    "prompt_tokens": self.input_tokens,
                    "completion_tokens": call.output_tokens,
                    "total_tokens": self.input_tokens + call.output_tokens,
                },
            },
        )
        call.ended = time.time()

    @staticmethod
    def _send(handler, status: int, body: dict, headers: dict | None = None) -> None:
        raw = json.dumps(body, ensure_ascii=False).encode()
        try:
            handler.send_response(status)
            for name, value in {"content-type": "application/json", **(headers or {})}.items():
                handler.send_header(name, value)
            handler.send_header("content-length", str(len(raw)))
            handler.end_headers()
            handler.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout): the tokens were generated all the same

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _complete_prompts(partial: str) -> list[str]:
    """The prompts of the items complete in a streamed JSON so far."""
    return [
        found.group(1)
        for found in re.finditer(r'"prompt": "([^"]*)", "alt_text": "[^"]*"}', partial)
    ]


def _match(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1) if found else None
