"""The customer surfaces: how each parses a request, renders an answer, a stream and an error."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from django.http import HttpResponse

from gateway import stored_responses
from gateway.errors import GatewayError
from gateway.translate import anthropic_messages, envelope, openai_chat, responses
from gateway.translate.common import CompletionRequest, Usage, json_bytes, json_compact
from gateway.translate.router import RouterDelta


@dataclass(slots=True)
class AnswerContext:
    request_id: str
    model: str
    pool_name: str
    created: int
    prompt_tokens_estimate: int
    include_usage: bool
    # Who asked and what, for a surface that keeps its answers (`/v1/responses` with `store`).
    organization_id: int | None = None
    api_key_id: int | None = None
    request: CompletionRequest | None = None
    # What a completed answer of these tokens costs (the pipeline's pricing), for a stream's final usage event; None:
    # not shown (the translators' tests, the playground's callers that do not price).
    cost_of: Callable[[Usage], int] | None = None


class StreamWriter:
    """What the pipeline feeds while relaying a router stream; one subclass per surface.

    `text_frame`, when a surface sets it, is the whole of its `delta` for text (a frame of the text alone, and
    b"" for no text): the relay calls it straight, once per token.
    """

    text_frame: Callable[[str], bytes] | None = None

    def start(self) -> bytes:
        raise NotImplementedError

    def delta(self, delta: RouterDelta, text: str) -> bytes:
        raise NotImplementedError

    def finish(self, *, finish_reason: str, stop_sequence: str | None, usage: Usage) -> bytes:
        raise NotImplementedError

    def error(self, err: GatewayError) -> bytes:
        raise NotImplementedError


class _OpenAIStream(StreamWriter):
    def __init__(self, ctx: AnswerContext) -> None:
        self._t = openai_chat.ChatStreamTranslator(
            completion_id=f"chatcmpl-{ctx.request_id[4:]}", created=ctx.created, model=ctx.model, include_usage=ctx.include_usage
        )
        self._cost_of = ctx.cost_of
        self.text_frame = self._t.text

    def start(self) -> bytes:
        return self._t.start()

    def delta(self, delta: RouterDelta, text: str) -> bytes:
        return self._t.text(text) if text else b""

    def finish(self, *, finish_reason: str, stop_sequence: str | None, usage: Usage) -> bytes:
        cost = self._cost_of(usage) if self._cost_of is not None else None
        return self._t.finish(finish_reason=finish_reason, usage=usage, cost_micros=cost)

    def error(self, err: GatewayError) -> bytes:
        return self._t.error(err)


class _AnthropicStream(StreamWriter):
    def __init__(self, ctx: AnswerContext) -> None:
        self._t = anthropic_messages.MessagesStreamTranslator(
            message_id=f"msg_{ctx.request_id[4:]}", model=ctx.model, input_tokens=ctx.prompt_tokens_estimate
        )
        self.text_frame = self._t.text

    def start(self) -> bytes:
        return self._t.start()

    def delta(self, delta: RouterDelta, text: str) -> bytes:
        return self._t.text(text) if text else b""

    def finish(self, *, finish_reason: str, stop_sequence: str | None, usage: Usage) -> bytes:
        return self._t.finish(finish_reason=finish_reason, stop_sequence=stop_sequence, usage=usage)

    def error(self, err: GatewayError) -> bytes:
        return self._t.error(err)


class _EnvelopeStream(StreamWriter):
    def __init__(self, ctx: AnswerContext) -> None:
        self._request_id = ctx.request_id
        self._t = envelope.EnvelopeStreamTranslator(model=ctx.model, pool_name=ctx.pool_name)

    def start(self) -> bytes:
        return self._t.start()

    def delta(self, delta: RouterDelta, text: str) -> bytes:
        # Relayed one to one: every accepted chunk of the locked miner, text or not.
        return self._t.chunk(delta.raw) if delta.raw is not None else b""

    def finish(self, *, finish_reason: str, stop_sequence: str | None, usage: Usage) -> bytes:
        return self._t.finish()

    def error(self, err: GatewayError) -> bytes:
        return self._t.error(err, self._request_id)


class _ResponsesStream(StreamWriter):
    def __init__(self, ctx: AnswerContext) -> None:
        assert isinstance(ctx.request, responses.ResponsesRequest)
        self._ctx = ctx
        self._t = responses.ResponsesStreamTranslator(
            request_id=ctx.request_id, created_at=ctx.created, model=ctx.model, request=ctx.request
        )
        self.text_frame = self._t.text

    def start(self) -> bytes:
        return self._t.start()

    def delta(self, delta: RouterDelta, text: str) -> bytes:
        return self._t.text(text) if text else b""

    def finish(self, *, finish_reason: str, stop_sequence: str | None, usage: Usage) -> bytes:
        frames = self._t.finish(finish_reason=finish_reason, usage=usage)
        assert self._t.final is not None and self._t.final_json is not None
        stored_responses.remember(
            self._ctx, body_json=self._t.final_json, text=self._t.final_text, status=self._t.final["status"]
        )
        return frames

    def error(self, err: GatewayError) -> bytes:
        return self._t.error(err)


def json_response(body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    content = json_bytes(body)
    response = HttpResponse(content, status=status, content_type="application/json")
    # Sized, so daphne sends it as one body instead of chunked framing (Django leaves this to middleware).
    response["Content-Length"] = str(len(content))
    if headers:
        for name, value in headers.items():
            response[name] = value
    return response


@dataclass(frozen=True, slots=True)
class Surface:
    route: str  # the usage event's route label
    anthropic: bool
    parse: Callable[[object], CompletionRequest]
    stream_writer: Callable[[AnswerContext], StreamWriter]
    # Run once the body is parsed and the caller's organization known, before the model is resolved: may change
    # the request (a continued conversation) or refuse it with a GatewayError. None for surfaces without one.
    prepare: Callable[[CompletionRequest, int], Awaitable[None]] | None = None

    @property
    def limits_surface(self) -> Literal["openai", "anthropic"]:
        return "anthropic" if self.anthropic else "openai"

    def error_body(
        self, err: GatewayError, *, request_id: str, model: str | None = None, pool_name: str | None = None
    ) -> dict[str, Any]:
        if self.anthropic:
            return anthropic_messages.anthropic_error_body(err, request_id)
        if self.route == ENVELOPE_ROUTE:
            return envelope.envelope_error_body(err, request_id=request_id, model=model, pool_name=pool_name)
        return openai_chat.openai_error_body(err)

    def error_status(self, err: GatewayError) -> int:
        return err.status_for_anthropic if self.anthropic else err.status

    def error_response(
        self, err: GatewayError, *, request_id: str, model: str | None = None, pool_name: str | None = None
    ) -> HttpResponse:
        return json_response(
            self.error_body(err, request_id=request_id, model=model, pool_name=pool_name),
            status=self.error_status(err),
            headers=err.headers,
        )

    def answer(
        self, ctx: AnswerContext, *, text: str, finish_reason: str, stop_sequence: str | None, usage: Usage, raw: dict[str, Any]
    ) -> dict[str, Any]:
        if self.anthropic:
            return anthropic_messages.messages_response(
                message_id=f"msg_{ctx.request_id[4:]}",
                model=ctx.model,
                text=text,
                finish_reason=finish_reason,
                stop_sequence=stop_sequence,
                usage=usage,
            )
        if self.route == ENVELOPE_ROUTE:
            return envelope.envelope_response(request_id=ctx.request_id, model=ctx.model, pool_name=ctx.pool_name, data=raw)
        if self.route == RESPONSES_ROUTE:
            assert isinstance(ctx.request, responses.ResponsesRequest)
            answer = responses.responses_answer(
                request_id=ctx.request_id,
                created_at=ctx.created,
                model=ctx.model,
                request=ctx.request,
                text=text,
                finish_reason=finish_reason,
                usage=usage,
                completed_at=int(time.time()),
            )
            stored_responses.remember(ctx, body_json=json_compact(answer), text=text, status=answer["status"])
            return answer
        return openai_chat.chat_completion_response(
            completion_id=f"chatcmpl-{ctx.request_id[4:]}",
            created=ctx.created,
            model=ctx.model,
            text=text,
            finish_reason=finish_reason,
            usage=usage,
        )


CHAT_ROUTE = "chat.completions"
MESSAGES_ROUTE = "messages"
ENVELOPE_ROUTE = "completions"
RESPONSES_ROUTE = "responses"

OPENAI_CHAT = Surface(route=CHAT_ROUTE, anthropic=False, parse=openai_chat.parse_chat_request, stream_writer=_OpenAIStream)
ANTHROPIC_MESSAGES = Surface(
    route=MESSAGES_ROUTE, anthropic=True, parse=anthropic_messages.parse_messages_request, stream_writer=_AnthropicStream
)
ENVELOPE = Surface(route=ENVELOPE_ROUTE, anthropic=False, parse=envelope.parse_envelope_request, stream_writer=_EnvelopeStream)
OPENAI_RESPONSES = Surface(
    route=RESPONSES_ROUTE,
    anthropic=False,
    parse=responses.parse_responses_request,
    stream_writer=_ResponsesStream,
    prepare=stored_responses.prepare,
)


def surface_for_path(path: str) -> Surface:
    """The surface whose shape every answer on `path` takes, errors included: a route and everything below it."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return ANTHROPIC_MESSAGES
    if path == "/v1/completions" or path.startswith("/v1/completions/"):
        return ENVELOPE
    if path == "/v1/responses" or path.startswith("/v1/responses/"):
        return OPENAI_RESPONSES
    return OPENAI_CHAT
