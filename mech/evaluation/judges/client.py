"""Calls to any OpenAI-compatible chat API (OpenAI itself, a local vLLM server) that survive a
flaky server, share one concurrency limit, never pay twice for a cached call, and count tokens.

This module knows nothing about what is asked: judges (`mech.evaluation.judges.openai_judge`) and data generators
(`mech.evaluation.datagen`) build the messages, the cache keys and the meaning of a reply. The openai client's
own retries are off: we retry 429, 408, 5xx, timeouts and connection errors with capped, fully
jittered exponential backoff, and honour Retry-After.

    client = LLMClient(ClientConfig(base_url="http://127.0.0.1:8000/v1"), cache=JudgeCache(path))
    async with client.connected():
        raw = await client.complete(messages, {"temperature": 0}, "row 3", cache_key=key)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import openai

from mech.evaluation.judges.cache import JudgeCache

RawResponse = dict[str, Any]
"""What is cached per call: `content` (str | None), `top_logprobs` (the first position's
[{token, logprob}], or None when not requested or not returned) and `usage` (token counts)."""

T = TypeVar("T")


@dataclass(frozen=True)
class ClientConfig:
    """Where requests go and how hard to try; never the key itself (see `api_key_env`)."""

    model: str = "gpt-4o-2024-08-06"
    """Model name as the server knows it."""
    base_url: str | None = None
    """An OpenAI-compatible server (e.g. "http://127.0.0.1:8000/v1"); None is OpenAI."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key; the key itself never enters configs or run folders."""
    concurrency: int = 8
    """Most requests in flight at once (a request keeps its slot during its retry waits)."""
    max_retries: int = 6
    """Retries per request after the first attempt, for 429, 408, 5xx, timeouts, connection errors."""
    timeout_s: float = 60.0
    """Per-attempt HTTP timeout."""
    backoff_base_s: float = 1.0
    """Retry k waits uniform(0, min(backoff_max_s, backoff_base_s * 2**k)) ("full jitter")."""
    backoff_max_s: float = 60.0
    """Cap on any wait, Retry-After included, so a confused server cannot stall a run for hours."""
    price_per_million_input: float | None = None
    """Price of a million prompt tokens, for `RequestStats.cost`; set both prices or neither."""
    price_per_million_output: float | None = None
    """Price of a million completion tokens."""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0:
            raise ValueError("concurrency must be >= 1 and max_retries >= 0")
        if self.timeout_s <= 0 or self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("timeout_s must be > 0 and the backoff times >= 0")
        if (self.price_per_million_input is None) != (self.price_per_million_output is None):
            raise ValueError("set both prices (input and output) or neither")

    @property
    def priced(self) -> bool:
        return self.price_per_million_input is not None


@dataclass
class RequestStats:
    """Running totals over a client's lifetime, updated after every call."""

    requests: int = 0
    """HTTP requests sent, failed attempts included."""
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    """In the currency of the configured prices; None when no prices are configured."""


class LLMRequestError(RuntimeError):
    """A call failed for good: a non-retryable status, or every retry used up.

    `status` is the HTTP status of a non-retryable refusal (e.g. 400 for a prompt the provider's
    content filter rejects), so callers can skip one bad prompt yet stop on 401 or 404; it is None
    when the retries ran out.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# ---- retries --------------------------------------------------------------------------------


def is_retryable(status: int) -> bool:
    """Rate limits, server errors and server-side timeouts pass; other 4xx are our fault."""
    return status in (408, 429) or status >= 500


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait (Retry-After in seconds or as an HTTP date, or
    retry-after-ms), or None when it does not say."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, *, base_s: float, max_s: float) -> float:
    """Full jitter: uniform over [0, min(max_s, base_s * 2**attempt)], so clients spread out."""
    return random.uniform(0.0, min(max_s, base_s * 2.0**attempt))


def resolve_api_key(base_url: str | None, api_key_env: str) -> str:
    """The key from the environment; local servers ignore keys, so they get a dummy one."""
    key = os.environ.get(api_key_env)
    if key:
        return key
    if base_url is not None:
        return "none"
    raise RuntimeError(
        f"no API key for OpenAI: set the environment variable {api_key_env} "
        "(keys are read only from the environment), or set base_url to a local OpenAI-compatible server"
    )


async def gather_or_cancel(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Results in order; on the first failure the others are cancelled (and awaited) before it
    propagates, so no request keeps running, and paying, for a run that has already failed."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ---- the client -----------------------------------------------------------------------------


class LLMClient:
    """Chat completions with retries, a concurrency limit, an optional cache and `stats`.

    The HTTP connection and the concurrency limit belong to one event loop, so they live only
    inside `async with client.connected():`; settings, cache and stats outlive it. The key is read
    when the client is made, so a missing key fails before any work starts. The cache is borrowed:
    whoever opened it closes it.
    """

    def __init__(
        self, config: ClientConfig, *, cache: JudgeCache | None = None, what: str = "request"
    ) -> None:
        self.config = config
        self.cache = cache
        self.what = what
        """How errors name a call, e.g. "judge request"."""
        self.stats = RequestStats(cost=0.0 if config.priced else None)
        self._api_key = resolve_api_key(config.base_url, config.api_key_env)
        self._http: openai.AsyncOpenAI | None = None
        self._semaphore: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[LLMClient]:
        """Open the HTTP client and the concurrency limit for the running event loop."""
        if self._http is not None:
            raise RuntimeError("LLMClient.connected() is already open; it cannot be nested")
        self._http = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=self._api_key,
            max_retries=0,
            timeout=self.config.timeout_s,
        )
        self._semaphore = asyncio.Semaphore(self.config.concurrency)
        try:
            yield self
        finally:
            http, self._http, self._semaphore = self._http, None, None
            await http.close()

    async def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        params: Mapping[str, Any],
        label: str,
        *,
        cache_key: str | None = None,
    ) -> RawResponse:
        """The raw response to `messages` with sampling `params`, from the cache when `cache_key`
        is there, else from the server (then cached under it). `label` names the call in errors."""
        if self.cache is not None and cache_key is not None:
            if (hit := self.cache.get(cache_key)) is not None:
                self.stats.cache_hits += 1
                return hit
        if self._http is None or self._semaphore is None:
            raise RuntimeError("LLMClient.complete needs `async with client.connected():`")
        # The slot is held through retry waits: backing off must also slow the whole run down.
        async with self._semaphore:
            raw = await self._request(self._http, [dict(m) for m in messages], params, label)
        if self.cache is not None and cache_key is not None:
            self.cache.put(cache_key, raw)
        return raw

    async def _request(
        self,
        http: openai.AsyncOpenAI,
        messages: list[dict[str, str]],
        params: Mapping[str, Any],
        label: str,
    ) -> RawResponse:
        cfg = self.config
        last, last_error = "", None
        for attempt in range(cfg.max_retries + 1):
            self.stats.requests += 1
            try:
                completion = await http.chat.completions.create(model=cfg.model, messages=messages, **params)
            except openai.APIStatusError as err:
                if not is_retryable(err.status_code):
                    raise LLMRequestError(
                        f"{self.what} for {label} failed with HTTP {err.status_code}, which is not retried: "
                        f"{err.message}",
                        status=err.status_code,
                    ) from err
                last, last_error, delay = f"HTTP {err.status_code}", err, retry_after_s(err.response.headers)
            except openai.APITimeoutError as err:  # before APIConnectionError, its base class
                last, last_error, delay = f"timeout after {cfg.timeout_s:g}s", err, None
            except openai.APIConnectionError as err:
                last, last_error, delay = f"connection error ({err})", err, None
            else:
                return self._record(completion)
            if attempt == cfg.max_retries:
                break
            if delay is None:
                delay = backoff_delay(attempt, base_s=cfg.backoff_base_s, max_s=cfg.backoff_max_s)
            self.stats.retries += 1
            await asyncio.sleep(min(delay, cfg.backoff_max_s))
        raise LLMRequestError(
            f"{self.what} for {label} gave up after {cfg.max_retries + 1} attempts; last failure: {last}"
        ) from last_error

    def _record(self, completion: Any) -> RawResponse:
        """The cacheable raw data of a completion; adds its usage to the stats."""
        choice = completion.choices[0]
        top = None
        if choice.logprobs is not None and choice.logprobs.content:
            top = [{"token": t.token, "logprob": t.logprob} for t in choice.logprobs.content[0].top_logprobs]
        usage = completion.usage
        prompt_tokens = usage.prompt_tokens if usage is not None else 0
        completion_tokens = usage.completion_tokens if usage is not None else 0
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        if self.stats.cost is not None:
            self.stats.cost += (
                prompt_tokens * self.config.price_per_million_input
                + completion_tokens * self.config.price_per_million_output
            ) / 1e6
        return {
            "content": choice.message.content,
            "top_logprobs": top,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }
