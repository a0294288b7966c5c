"""An OpenAI-compatible chat endpoint (OpenAI, ``vllm serve``, llama.cpp's server, ...) as a model
that completes conversations: the LLM judge (:mod:`alignlab.eval.grading`) and the teacher of
:mod:`alignlab.stages.generate_data` use it.

Requests go through the ``openai`` client with a configurable ``base_url``; the API key is read
from an environment variable, never from a file or the command line. A server that refuses
(HTTP 4xx/5xx) or cannot be reached is an :class:`EndpointError` naming the URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from alignlab.errors import AlignlabError, ConfigError

Messages = list[dict[str, str]]
_ERROR_CODE = re.compile(r"^Error code: \d+ - ")  # the openai client's prefix of a server's message


class EndpointError(AlignlabError):
    """The endpoint could not be reached or answered with an error (the message names it)."""


@dataclass
class EndpointSettings:
    """An OpenAI-compatible chat endpoint.

    Attributes:
        model: the model name the endpoint serves (e.g. gpt-4o, or what a local vLLM serves).
        base_url: the API root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1.
        api_key_env: the environment variable holding the API key; a local server without
            authentication needs none (a placeholder key is sent).
        max_tokens: the longest completion.
        temperature: sampling temperature (0: FastChat grades with temperature 0).
        timeout: seconds per request.
        max_retries: retries on connection errors and 429/5xx (the openai client's backoff).
        concurrency: requests in flight at once.
    """

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 512
    temperature: float = 0.0
    timeout: float = 60.0
    max_retries: int = 2
    concurrency: int = 4


def _short(text: str, width: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


class ChatEndpoint:
    """``complete(conversations) -> [reply text]`` against an OpenAI-compatible endpoint."""

    def __init__(self, settings: EndpointSettings) -> None:
        from openai import OpenAI

        if not settings.model:
            raise ConfigError("endpoint: name the model it serves (openai:MODEL)")
        if not re.match(r"https?://", settings.base_url):
            raise ConfigError(f"endpoint base URL {settings.base_url!r} must start with http:// or https://")
        self.settings = settings
        self.name = f"openai:{settings.model}@{settings.base_url}"
        key = os.environ.get(settings.api_key_env) or "no-key"  # local servers ignore it
        self.client = OpenAI(
            base_url=settings.base_url,
            api_key=key,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )

    def _one(self, messages: Messages, options: dict[str, Any]) -> str:
        import openai

        s = self.settings
        try:
            reply = self.client.chat.completions.create(model=s.model, messages=messages, **options)
        except openai.APIStatusError as err:
            said = _short(_ERROR_CODE.sub("", err.message))
            hint = f" (is ${s.api_key_env} set?)" if err.status_code in (401, 403) else ""
            raise EndpointError(
                f"endpoint {s.base_url} answered HTTP {err.status_code} for model {s.model!r}: {said}{hint}"
            ) from None
        except openai.APIConnectionError as err:
            raise EndpointError(f"endpoint {s.base_url}: cannot connect ({_short(str(err))})") from None
        choices = getattr(reply, "choices", None) or []
        return (choices[0].message.content or "") if choices else ""

    def complete(
        self,
        conversations: Sequence[Messages],
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
    ) -> list[str]:
        """One reply per conversation, ``concurrency`` requests at a time, in order."""
        s = self.settings
        options: dict[str, Any] = {
            "temperature": s.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or s.max_tokens,
        }
        if top_p is not None and top_p < 1.0:
            options["top_p"] = top_p
        with ThreadPoolExecutor(max_workers=max(1, s.concurrency)) as pool:
            return list(pool.map(lambda m: self._one(m, options), conversations))
