"""A client for OpenAI-compatible ``POST {base_url}/chat/completions`` endpoints, standard library only.

Why not the ``openai`` package: it is not in the venv and would be one more runtime dependency for one call;
``urllib`` gives us the whole policy explicitly. Retried with exponential backoff (and the server's
``Retry-After`` when it sends one): connection errors, timeouts, 408, 409, 429 and 5xx, as the ``openai`` client
does. Other statuses (400, 401, 404, ...) fail at once. Requests run on ``concurrency`` threads and all of them
share one requests-per-second limit.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from megatron_align.errors import UserError

RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class EndpointError(UserError, RuntimeError):
    """The endpoint could not answer (after the retries, or with a status that is not retried)."""


@dataclass
class EndpointSettings:
    base_url: str
    model: str
    api_key: Optional[str] = None
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    concurrency: int = 8
    rate_limit_rps: float = 0.0  # 0: no limit


class RateLimiter:
    """At most ``rps`` call starts per second over all threads (evenly spaced; 0 = unlimited)."""

    def __init__(self, rps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self) -> None:
        if self.interval <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


def backoff_delay(attempt: int, base: float, cap: float, retry_after: Optional[float] = None) -> float:
    """Seconds before retry ``attempt`` (1-based): the server's Retry-After when given (capped), else
    ``base * 2**(attempt-1)`` capped, with up to 25% jitter so that parallel workers do not retry in step."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    delay = min(base * (2 ** (attempt - 1)), cap)
    return delay * (1.0 - 0.25 * random.random())


@dataclass
class CallStats:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatClient:
    """``complete(list of message lists, sampling) -> list of reply texts``, in order, concurrently."""

    def __init__(self, settings: EndpointSettings) -> None:
        if not settings.base_url.startswith(("http://", "https://")):
            raise EndpointError(f"base_url must start with http:// or https://, got {settings.base_url!r}")
        self.s = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self.limiter = RateLimiter(settings.rate_limit_rps)
        self.stats = CallStats()
        self._lock = threading.Lock()

    def complete(self, batch: Sequence[List[Dict[str, str]]], sampling: Dict[str, Any]) -> List[str]:
        if not batch:
            return []
        workers = max(1, min(self.s.concurrency, len(batch)))
        if workers == 1:
            return [self.complete_one(m, sampling) for m in batch]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda m: self.complete_one(m, sampling), batch))

    def complete_one(self, messages: List[Dict[str, str]], sampling: Dict[str, Any]) -> str:
        body = json.dumps({"model": self.s.model, "messages": messages, **sampling}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.s.api_key:
            headers["Authorization"] = f"Bearer {self.s.api_key}"
        last = ""
        for attempt in range(self.s.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
            self.limiter.wait()
            with self._lock:
                self.stats.requests += 1
            retry_after = None
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.s.timeout_s) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return self._content(payload)
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                last = f"HTTP {e.code}{': ' + detail if detail else ''}"
                if e.code not in RETRY_STATUSES:
                    raise EndpointError(f"{self.url}: {last} (not retried)") from None
                retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                    http.client.HTTPException) as e:
                reason = getattr(e, "reason", e)
                last = f"connection failed ({reason})"
            except (json.JSONDecodeError, UnicodeDecodeError):
                last = "the reply is not JSON"
            if attempt < self.s.max_retries:
                time.sleep(backoff_delay(attempt + 1, self.s.backoff_s, self.s.max_backoff_s, retry_after))
        raise EndpointError(f"{self.url}: {last}, after {self.s.max_retries + 1} attempts")

    def _content(self, payload: Any) -> str:
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.url}: the reply has no choices[0].message.content") from None
        usage = payload.get("usage") or {}
        with self._lock:
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        return content if isinstance(content, str) else ""


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
        obj = json.loads(text)
        msg = obj.get("error", {}).get("message") if isinstance(obj.get("error"), dict) else obj.get("error")
        return str(msg or "")[:200]
    except Exception:  # the detail is a courtesy: an unreadable body leaves just the status
        return ""


def api_key_from_env(name: Optional[str]) -> Optional[str]:
    """The key held by environment variable ``name`` (None: no key); a named but unset variable is an error."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise EndpointError(f"the api key variable {name} is not set (set it, or teacher.api_key_env: null)")
    return value
