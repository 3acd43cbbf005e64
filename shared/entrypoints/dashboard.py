"""The operator dashboard: a static page and the JSON it draws, under ``/api/admin/dashboard``.

A browser navigation cannot send ``Authorization: Bearer``, so the page is a shell with no data
and no secret in it, served to anyone; its script asks the operator for a token once (kept in the
tab's sessionStorage) and sends it on every data request, which needs the ``operator`` role like
the rest of the operator API. The page, its script and its style are files in ``static/`` shipped
with the app (no build step, no CDN: operator networks may be offline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from .. import bootstrap
from ..service.dashboard import MAX_HOURS, dashboard_figures
from .auth import Principal

STATIC = Path(__file__).with_name("static")
PAGE = "/api/admin/dashboard"
#: Served without authentication: the shell and its assets, none holding data (see the docstring).
ASSETS = {
    PAGE: ("dashboard.html", "text/html; charset=utf-8"),
    f"{PAGE}/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    f"{PAGE}/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# The token lives in sessionStorage, so script injection is the threat that matters: only our own
# files may run or load, nothing may frame the page, and the page never tells others where it was.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def register(api: FastAPI, caller: Callable[..., Principal], get_services: Callable[[], bootstrap.Services]) -> None:
    for path, (name, media_type) in ASSETS.items():
        _serve(api, path, STATIC / name, media_type)

    @api.get(f"{PAGE}/data", tags=["operations"])
    async def dashboard_data(request: Request, hours: int = Query(24, ge=1, le=MAX_HOURS)) -> dict[str, Any]:
        # In the threadpool like every async route: checking an Entra token may fetch the tenant's
        # signing keys, which must not stall the event loop.
        await run_in_threadpool(caller, request, "operator")
        svc = get_services()
        return await run_in_threadpool(
            dashboard_figures, ledger=svc.ledger, clock=svc.clock, hours=hours, thresholds=svc.failure_rate_thresholds
        )


def _serve(api: FastAPI, path: str, file: Path, media_type: str) -> None:
    @api.get(path, include_in_schema=False, name=f"dashboard:{file.name}")
    def asset() -> FileResponse:
        return FileResponse(file, media_type=media_type, headers=SECURITY_HEADERS)
