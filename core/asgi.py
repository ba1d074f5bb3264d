"""An ASGI app receiving gateway webhooks: ``POST /webhooks/{gateway}``.

Needs the ``aegispay[asgi]`` extra (Starlette)::

    from aegispay import build_service, load_settings
    from aegispay.asgi import create_app

    app = create_app(build_service(load_settings()), manage_service=True)
    # uvicorn module:app

Answers, chosen so a gateway's retry policy does the right thing:

* 200 - the delivery is handled and everything it changed is committed (applied, a duplicate,
  ignored, or rejected as contradicting the payment: redelivering would not change that);
* 400 - the signature does not verify, or the body is not an event of that gateway;
* 404 - no such gateway, or it receives no webhooks;
* 503 - storage (or the payment's lock) is unavailable: nothing was applied, redeliver later.

Bodies never carry secrets or signatures; an unexpected error is logged and answered 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from .errors import (
    ConcurrencyConflict,
    InvalidInput,
    LockTimeout,
    PluginError,
    StoreError,
)
from .webhooks import UnknownWebhookGateway, WebhookSignatureError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from .service import PaymentService

log = logging.getLogger("aegispay.asgi")

#: The largest webhook body read (gateways send a few KiB).
MAX_BODY = 1024 * 1024


def _starlette() -> Any:
    try:
        import starlette.applications
        import starlette.responses
        import starlette.routing
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "aegispay.asgi needs Starlette: install the extra with `pip install 'aegispay[asgi]'`"
        ) from error
    return starlette


def create_app(service: PaymentService, *, manage_service: bool = False) -> Starlette:
    """A Starlette app for ``service``'s webhooks. With ``manage_service`` the app's lifespan
    enters the service (outbox relay, janitor) on startup and leaves and closes it on
    shutdown; otherwise whoever built the service runs it."""
    starlette = _starlette()
    JSON = starlette.responses.JSONResponse

    def error(status: int, problem: str) -> JSONResponse:
        response: JSONResponse = JSON({"error": problem}, status_code=status)
        return response

    async def receive(request: Request) -> JSONResponse:
        gateway = request.path_params["gateway"]
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            return error(413, f"body larger than {MAX_BODY} bytes")
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(413, f"body larger than {MAX_BODY} bytes")
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            result = await service.handle_webhook(gateway, headers, body)
        except UnknownWebhookGateway as exc:
            return error(404, str(exc))
        except (WebhookSignatureError, InvalidInput) as exc:
            log.warning("webhook for %s refused: %s", gateway, exc)
            return error(400, str(exc))
        except (StoreError, LockTimeout, ConcurrencyConflict) as exc:
            # Nothing was applied: a 5xx makes the gateway deliver again later.
            log.warning("webhook for %s not processed, storage unavailable: %s", gateway, exc)
            return error(503, "temporarily unavailable, retry later")
        except PluginError as exc:
            log.error("webhook for %s: %s", gateway, exc)
            return error(500, "internal error")
        response: JSONResponse = JSON(result.to_dict(), status_code=200)
        return response

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if not manage_service:
            yield
            return
        async with service:
            yield
        await service.aclose()

    routes = [starlette.routing.Route("/webhooks/{gateway}", receive, methods=["POST"])]
    app: Starlette = starlette.applications.Starlette(routes=routes, lifespan=lifespan)
    return app
