"""A minimal OpenAI-compatible server: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Standard library only (``http.server``; FastAPI/uvicorn are not installed). Request threads hand their
requests to one worker that batches whatever arrived together (same sampling settings) into one engine call.
Backends: a megatron_align checkpoint (:class:`EngineBackend`) or canned replies from a rules file
(:class:`ReplayBackend`, for dry runs and tests). ``fail_first`` answers the first K completion requests with
``fail_status`` (503, 429, ...) to exercise a client's retries. Not streaming, ``n = 1`` only; bind it to
127.0.0.1 (it has no authentication).
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

from megatron_align.pas.config import SamplingSection, check_engine_sampling
from megatron_align.pas.teachers import Reply


class BadRequest(Exception):
    """A request the server answers with 400 (the message goes into the error body)."""


@dataclass
class ChatRequest:
    messages: List[Dict[str, str]]
    sampling: SamplingSection


def parse_request(body: bytes, defaults: SamplingSection) -> ChatRequest:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("the body must be a JSON object")
    if obj.get("stream"):
        raise BadRequest("stream=true is not supported by this server")
    if obj.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported")
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("`messages` must be a non-empty list")
    out = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{k}]: role must be system, user or assistant")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise BadRequest(f"messages[{k}]: content must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    try:
        sampling = SamplingSection(
            temperature=float(obj.get("temperature", defaults.temperature)),
            top_p=float(obj.get("top_p", defaults.top_p)),
            top_k=int(obj.get("top_k", defaults.top_k) or 0),
            max_new_tokens=int(obj.get("max_completion_tokens") or obj.get("max_tokens") or defaults.max_new_tokens),
            seed=int(obj.get("seed", defaults.seed)))
        sampling.validate()
        check_engine_sampling(sampling, "sampling")
    except (TypeError, ValueError) as e:
        raise BadRequest(f"bad sampling parameters: {e}") from None
    return ChatRequest(out, sampling)


class EngineBackend:
    """A checkpoint teacher serving requests; one engine call per group of same-sampling requests."""

    def __init__(self, teacher) -> None:
        self.teacher = teacher

    def answer(self, requests: List[ChatRequest]) -> List[Optional[Reply]]:
        groups: Dict[Tuple, List[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(tuple(r.sampling.__dict__.items()), []).append(i)
        out: List[Optional[Reply]] = [None] * len(requests)
        for idx in groups.values():
            replies = self.teacher.generate([requests[i].messages for i in idx], requests[idx[0]].sampling)
            for i, rep in zip(idx, replies):
                out[i] = rep
        return out


class ReplayBackend:
    """Canned replies: a JSONL of ``{"match": regex, "replies": [str, ...]}`` rules, tried in order against the
    last user message. The k-th request with the same last user message that a rule matches gets its
    ``replies[k]`` (the last one repeats), so a reply sequence per prompt is deterministic under concurrency."""

    def __init__(self, path: str) -> None:
        from megatron_align.data.jsonl import iter_records

        def parse(rule) -> Tuple[re.Pattern, List[str]]:
            replies = rule.get("replies") if isinstance(rule, dict) else None
            if not (isinstance(replies, list) and replies and all(isinstance(r, str) for r in replies)
                    and isinstance(rule.get("match"), str)):
                raise ValueError('expected {"match": regex, "replies": [str, ...]}')
            try:
                return re.compile(rule["match"], re.DOTALL), replies
            except re.error as e:
                raise ValueError(f"field `match` is not a regular expression ({e})") from None

        self.rules = [r for _, r in iter_records(path, parse)]
        self.seen: Dict[Tuple[int, str], int] = {}
        self.lock = threading.Lock()

    def answer(self, requests: List[ChatRequest]) -> List[Optional[Reply]]:
        out = []
        for r in requests:
            last = next((m["content"] for m in reversed(r.messages) if m["role"] == "user"), "")
            rep = None
            for k, (pattern, replies) in enumerate(self.rules):
                if pattern.search(last):
                    with self.lock:
                        n = self.seen.get((k, last), 0)
                        self.seen[(k, last)] = n + 1
                    text = replies[min(n, len(replies) - 1)]
                    rep = Reply(text, len(last.split()), len(text.split()))
                    break
            out.append(rep if rep is not None else Reply("", 0, 0, "no_rule"))
        return out


class Batcher:
    """One worker thread: takes every queued request (up to ``max_batch``), answers them in one backend call."""

    def __init__(self, backend, max_batch: int = 32, wait_s: float = 0.005) -> None:
        self.backend, self.max_batch, self.wait_s = backend, max_batch, wait_s
        self.q: "queue.Queue[Tuple[ChatRequest, Future]]" = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, req: ChatRequest) -> Future:
        fut: Future = Future()
        self.q.put((req, fut))
        return fut

    def _loop(self) -> None:
        while True:
            items = [self.q.get()]
            time.sleep(self.wait_s)  # let concurrent requests join the batch
            while len(items) < self.max_batch:
                try:
                    items.append(self.q.get_nowait())
                except queue.Empty:
                    break
            try:
                replies = self.backend.answer([r for r, _ in items])
                for (_, fut), rep in zip(items, replies):
                    fut.set_result(rep)
            except Exception as e:  # the requests fail with 500; the server keeps serving
                for _, fut in items:
                    fut.set_exception(e)


class PasServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, backend, model_name: str, defaults: SamplingSection, fail_first: int = 0,
                 fail_status: int = 503, max_batch: int = 32) -> None:
        super().__init__(address, Handler)
        self.batcher = Batcher(backend, max_batch)
        self.model_name, self.defaults = model_name, defaults
        self.fail_left, self.fail_status = int(fail_first), int(fail_status)
        self.counter_lock = threading.Lock()
        self.requests_seen = 0

    def take_failure(self) -> bool:
        with self.counter_lock:
            self.requests_seen += 1
            if self.fail_left > 0:
                self.fail_left -= 1
                return True
            return False


class Handler(BaseHTTPRequestHandler):
    server: PasServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:  # quiet: one line per request would drown the client's logs
        pass

    def _send(self, status: int, obj, headers: Optional[Dict[str, str]] = None) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers=None) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error" if status == 400
                                      else "server_error", "code": status}}, headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                         "created": 0, "owned_by": "megatron-align"}]})
        elif self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        if self.server.take_failure():
            return self._error(self.server.fail_status, "injected failure (--fail-first)", {"Retry-After": "0"})
        try:
            req = parse_request(body, self.server.defaults)
        except BadRequest as e:
            return self._error(400, str(e))
        try:
            rep = self.server.batcher.submit(req).result()
        except Exception as e:  # a backend failure is the server's (500), reported, not fatal
            return self._error(500, f"{type(e).__name__}: {e}")
        if rep is None:
            return self._error(400, "the prompt does not fit the model's window (max_seq_length - max_tokens)")
        if rep.finish_reason == "no_rule":
            return self._error(400, "no canned reply matches this request")
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": rep.text},
                         "finish_reason": rep.finish_reason}],
            "usage": {"prompt_tokens": rep.prompt_tokens, "completion_tokens": rep.completion_tokens,
                      "total_tokens": rep.prompt_tokens + rep.completion_tokens}})
