"""The OCPP-J RPC session: one CALL in flight, results matched by id, inbound CALLs
dispatched to handlers, CALLERROR answers (OCPP-J §4).

The session owns no socket. The transport adapter calls `attach(send)` when a
websocket is up, `feed(text)` for every inbound text frame and `detach()` when the
connection is gone. Frame syntax lives in `frames`, payload checks in `schemas`.

Unlike the `ocpp` library, the receive path never awaits a handler: every inbound
CALL runs as its own task, so a handler may itself `await session.call(...)`
(e.g. a TriggerMessage that sends the triggered message) without deadlock, and a
slow handler never delays the CALLRESULT of our own outstanding CALL.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chargepoint.ocppj import frames, schemas
from chargepoint.ocppj.frames import Call, CallError, CallResult, FrameError
from chargepoint.ocppj.schemas import SchemaViolation

_SECRET_VALUE = re.compile(r'("value"\s*:\s*)"(?:[^"\\]|\\.)*"')


def redact(text: str | bytes) -> str | bytes:
    """A frame as it may be logged: the AuthorizationKey (write-only, Security WP §7.2) is
    never written to a log, not even at DEBUG."""
    if isinstance(text, bytes) or "AuthorizationKey" not in text:
        return text
    return _SECRET_VALUE.sub(r'\1"***"', text)


LOGGER_NAME = "chargepoint.ocppj"
# Message ids, unmatched action names and CALLERROR codes / descriptions are the peer's text:
# logged with %r, so a CR/LF in one cannot forge a log line (one line per event).

Payload = dict[str, Any]


class OcppError(Exception):
    """Raised by a handler to answer the CALL with a CALLERROR (OCPP-J §4.2.3)."""

    def __init__(self, error_code: str, description: str = "", details: Mapping[str, Any] | None = None) -> None:
        if error_code not in frames.ERROR_CODES:
            raise ValueError(f"{error_code!r} is not an OCPP-J 1.6 error code")
        super().__init__(f"{error_code}: {description}")
        self.error_code = error_code
        self.description = description
        self.details: dict[str, Any] = dict(details or {})


class NoReply(Exception):
    """Raised by a handler to send nothing at all: OCPP 1.6 §4.2, "While Rejected, the
    Charge Point SHALL NOT respond to any Central System initiated message"."""


class CallFailed(Exception):
    """Base of everything `Session.call()` raises when no valid CALLRESULT came back."""


class CallErrorReceived(CallFailed):
    """The other side answered our CALL with a CALLERROR."""

    def __init__(self, error_code: str, description: str = "", details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{error_code}: {description}")
        self.error_code = error_code
        self.description = description
        self.details: dict[str, Any] = dict(details or {})


class ResponseInvalid(CallErrorReceived):
    """The CALLRESULT (or CALLERROR frame) for our CALL broke its schema or the RPC
    framing; `error_code` says how, as if we had answered it (we cannot: §4.2.3)."""


class CallTimeout(CallFailed):
    """No answer within the timeout (OCPP-J §4.1.1: the CALL has timed out)."""


class NotConnected(CallFailed):
    """No connection, or it was lost before the answer arrived."""


@dataclass
class Reply:
    """A handler's CALLRESULT payload plus work to run once it is on the wire
    (e.g. TriggerMessage: OCPP 1.6 §5.17 wants the triggered message after the .conf)."""

    payload: Payload
    after_sent: Callable[[], Awaitable[None] | None] | None = None


Handler = Callable[[Payload], Awaitable[Payload | Reply]]
Send = Callable[[str], Awaitable[None]]


@dataclass
class _Pending:
    message_id: str
    action: str
    future: asyncio.Future[Payload]


class Session:
    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        call_timeout_s: float = 30.0,
        validate: bool = True,
        validate_outbound: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        """`validate`: check every inbound CALL and CALLRESULT against its schema (keep on).
        `validate_outbound`: also check what we send (a debug/test aid: we build those
        payloads ourselves, so production skips the cost). `monotonic` stamps
        `last_rx_s`; `on_activity` is called on every inbound frame (liveness)."""
        self.call_timeout_s = call_timeout_s
        self.validate = validate
        self.validate_outbound = validate_outbound
        self.on_activity = on_activity
        self.last_rx_s: float | None = None
        self._monotonic = monotonic
        self._log = logger or logging.getLogger(LOGGER_NAME)
        self._handlers: dict[str, Handler] = {}
        for action, handler in handlers.items():
            self.set_handler(action, handler)
        self._send: Send | None = None
        # Bumped on attach/detach: replies computed for an old connection are dropped.
        self._generation = 0
        self._call_lock = asyncio.Lock()
        self._pending: _Pending | None = None
        # Message ids of inbound CALLs whose handler is still running (this connection).
        self._inbound: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._send is not None

    def attach(self, send: Send) -> None:
        """A new connection is up; `send` writes one text frame to it."""
        if self._send is not None:
            self.detach()
        self._generation += 1
        self._send = send

    def detach(self) -> None:
        """The connection is gone: the pending call fails with NotConnected, late
        results are ignored, handlers still running answer into the void."""
        self._send = None
        self._generation += 1
        self._inbound = {}
        pending = self._pending
        if pending is not None and not pending.future.done():
            pending.future.set_exception(NotConnected(f"connection lost while waiting for {pending.action}"))

    def set_handler(self, action: str, handler: Handler) -> None:
        if self.validate and not schemas.is_known_action(action):
            # Every inbound CALL is validated; an action without a schema cannot be.
            raise ValueError(f"{action!r} is not an OCPP 1.6 action")
        self._handlers[action] = handler

    def remove_handler(self, action: str) -> None:
        self._handlers.pop(action, None)

    async def aclose(self) -> None:
        """Detach and cancel running handler and after_sent tasks (shutdown)."""
        self.detach()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ outbound

    async def call(self, action: str, payload: Payload, *, timeout_s: float | None = None) -> Payload:
        """Send a CALL and return the CALLRESULT payload.

        One CALL in flight at a time (OCPP-J §4.1.1): waits for the previous one to be
        answered or timed out. The timeout (default `call_timeout_s`) starts when it is
        our turn and is on the loop's monotonic clock, so NTP steps cannot fire or
        stretch it. Raises CallErrorReceived (ResponseInvalid for a bad answer),
        CallTimeout or NotConnected; all are CallFailed."""
        if self.validate_outbound:
            schemas.validate_request(action, payload)
        timeout = self.call_timeout_s if timeout_s is None else timeout_s
        async with self._call_lock:
            send = self._send
            if send is None:
                raise NotConnected(f"not connected: {action} not sent")
            message_id = frames.new_message_id()
            text = frames.encode_call(message_id, action, payload)
            future: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
            pending = self._pending = _Pending(message_id, action, future)
            try:
                async with asyncio.timeout(timeout):
                    self._log.debug("-> %s", redact(text))
                    try:
                        await send(text)
                    except Exception as exc:
                        raise NotConnected(f"{action} not sent: {exc!r}") from exc
                    return await future
            except TimeoutError:
                self._log.info("%s %s: no answer within %.1f s", action, message_id, timeout)
                raise CallTimeout(f"{action}: no answer within {timeout} s") from None
            finally:
                if self._pending is pending:
                    self._pending = None

    # ------------------------------------------------------------ inbound

    async def feed(self, text: str | bytes) -> None:
        """Process one inbound websocket message. Never raises (except cancellation)."""
        try:
            self.last_rx_s = self._monotonic()
            if self.on_activity is not None:
                self.on_activity()
            if self._log.isEnabledFor(logging.DEBUG):
                # The peer's JSON may put CR/LF between tokens: escaped, one line per frame.
                logged = redact(text)
                if isinstance(logged, str) and ("\n" in logged or "\r" in logged):
                    logged = logged.replace("\r", "\\r").replace("\n", "\\n")
                self._log.debug("<- %s", logged)
            try:
                frame = frames.parse(text)
            except FrameError as exc:
                await self._on_frame_error(exc)
                return
            if type(frame) is Call:
                await self._on_call(frame)
            elif type(frame) is CallResult:
                self._on_result(frame)
            else:
                assert type(frame) is CallError
                self._on_call_error(frame)
        except Exception:
            self._log.exception("error processing an inbound frame")

    async def _on_frame_error(self, exc: FrameError) -> None:
        if exc.answerable:
            assert exc.message_id is not None
            self._log.info("bad CALL %r: %s", exc.message_id, exc)
            await self._send_now(frames.encode_error(exc.message_id, exc.error_code, exc.description))
            return
        pending = self._pending
        if pending is not None and exc.message_id == pending.message_id and not pending.future.done():
            # A broken answer to our CALL: fail it now rather than let it time out.
            self._log.info("bad answer to %s %s: %s", pending.action, pending.message_id, exc)
            pending.future.set_exception(ResponseInvalid(exc.error_code, exc.description))
            return
        self._log.info("dropped frame: %s", exc)

    async def _on_call(self, call: Call) -> None:
        message_id, action = call.message_id, call.action
        if message_id in self._inbound:
            # OCPP-J §4.2.3: "an existing call with the same unique identifier is being
            # handled already" is answered with a CALLERROR; the handler is not run twice.
            self._log.info("CALL %r %r: duplicate message id", action, message_id)
            await self._send_now(
                frames.encode_error(
                    message_id, frames.FORMATION_VIOLATION, "a CALL with this message id is being handled already"
                )
            )
            return
        handler = self._handlers.get(action)
        if handler is None:
            # OCPP-J §4.2.3 Table 7: NotImplemented = "Requested Action is not known by
            # receiver"; NotSupported = "recognized but not supported".
            if schemas.is_known_action(action):
                code, description = frames.NOT_SUPPORTED, f"{action} is not supported"
            else:
                code, description = frames.NOT_IMPLEMENTED, "unknown action"
            self._log.info("CALL %r %r: %s", action, message_id, code)
            await self._send_now(frames.encode_error(message_id, code, description))
            return
        if self.validate:
            try:
                schemas.validate_request(action, call.payload)
            except SchemaViolation as exc:
                self._log.info("CALL %s %r: %s", action, message_id, exc)
                await self._send_now(frames.encode_error(message_id, exc.error_code, exc.description))
                return
        task = asyncio.get_running_loop().create_task(self._run_handler(call, handler, self._generation))
        self._inbound[message_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, call: Call, handler: Handler, generation: int) -> None:
        message_id, action = call.message_id, call.action
        after_sent = None
        try:
            try:
                result = await handler(call.payload)
                if isinstance(result, Reply):
                    payload, after_sent = result.payload, result.after_sent
                else:
                    payload = result
                if not isinstance(payload, dict):
                    raise TypeError(f"handler returned {type(payload).__name__}, not a dict")
                if self.validate_outbound:
                    schemas.validate_response(action, payload)
                text = frames.encode_result(message_id, payload)
            except NoReply:
                self._log.info("CALL %s %r: not answered (handler said so)", action, message_id)
                return
            except OcppError as exc:
                self._log.info("CALL %s %r answered %s: %s", action, message_id, exc.error_code, exc.description)
                try:
                    text = frames.encode_error(message_id, exc.error_code, exc.description, exc.details)
                except (TypeError, ValueError):  # details that are not JSON: drop them, keep the code
                    text = frames.encode_error(message_id, exc.error_code, exc.description)
            except Exception:
                # Our bug: full traceback in the log, nothing of it on the wire (§4.2.3 InternalError).
                self._log.exception("handler for %s %r failed", action, message_id)
                text = frames.encode_error(message_id, frames.INTERNAL_ERROR, "internal error")
                after_sent = None
            sent = await self._send_if_current(text, generation)
        finally:
            if self._inbound.get(message_id) is asyncio.current_task():
                del self._inbound[message_id]
        if sent and after_sent is not None:
            try:
                outcome = after_sent()
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                self._log.exception("after_sent of %s %r failed", action, message_id)

    def _on_result(self, result: CallResult) -> None:
        pending = self._match(result.message_id, "CALLRESULT")
        if pending is None:
            return
        if self.validate:
            try:
                schemas.validate_response(pending.action, result.payload)
            except SchemaViolation as exc:
                # Never hand a payload that breaks its schema to the services.
                self._log.info("invalid %s.conf %s: %s", pending.action, result.message_id, exc)
                pending.future.set_exception(ResponseInvalid(exc.error_code, exc.description))
                return
        pending.future.set_result(result.payload)

    def _on_call_error(self, error: CallError) -> None:
        pending = self._match(error.message_id, "CALLERROR")
        if pending is None:
            return
        self._log.info(
            "%s %s answered CALLERROR %r: %r",
            pending.action,
            error.message_id,
            error.error_code,
            error.error_description,
        )
        pending.future.set_exception(CallErrorReceived(error.error_code, error.error_description, error.error_details))

    def _match(self, message_id: str, kind: str) -> _Pending | None:
        pending = self._pending
        if pending is None or pending.message_id != message_id or pending.future.done():
            # Late (after a timeout), duplicated or unsolicited: nothing waits for it.
            self._log.info("dropped %s %r: no CALL waiting for it", kind, message_id)
            return None
        return pending

    # ------------------------------------------------------------ sending

    async def _send_now(self, text: str) -> bool:
        return await self._send_if_current(text, self._generation)

    async def _send_if_current(self, text: str, generation: int) -> bool:
        send = self._send
        if send is None or generation != self._generation:
            self._log.info("reply dropped: its connection is gone")
            return False
        self._log.debug("-> %s", redact(text))
        try:
            await send(text)
        except Exception as exc:
            self._log.info("reply not sent: %r", exc)
            return False
        return True
