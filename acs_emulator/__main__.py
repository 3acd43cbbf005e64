"""``python -m acs_emulator``: serve the ACS emulator with uvicorn.

Every flag falls back to its ``ACS_EMULATOR_*`` environment variable, then to the default.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .config import ENV_PREFIX, EmulatorConfig


def _parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig()
    p = argparse.ArgumentParser(
        prog="python -m acs_emulator",
        description="Local Azure Communication Services (Email + SMS) emulator with delivery reports.",
        epilog=f"Each option can also be set with {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}WEBHOOK_URL).",
    )
    p.add_argument("--host", help=f"bind address (default {defaults.host})")
    p.add_argument("--port", type=int, help=f"port (default {defaults.port})")
    p.add_argument("--access-key", help="base64 access key clients sign with (default: the fixed dev key)")
    p.add_argument(
        "--webhook-url", help=f"where reports are POSTed; '' turns them off (default {defaults.webhook_url})"
    )
    p.add_argument("--webhook-token", help=f"bearer token sent with reports (default {defaults.webhook_token})")
    p.add_argument("--report-delay-ms", type=int, help=f"delay before reports (default {defaults.report_delay_ms})")
    p.add_argument("--resource-id", help="Event Grid topic of the reports (the ACS resource id)")
    p.add_argument("--allowed-sender-domains", help="comma-separated linked sender domains (default: any)")
    p.add_argument("--report-retry-interval-ms", type=int, help="pause between report POST retries (default 500)")
    p.add_argument("--report-give-up-after-s", type=float, help="stop retrying a report after this long (default 60)")
    p.add_argument("--log-level", help="uvicorn/emulator log level (default info)")
    return p


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from .app import create_app

    args = _parser().parse_args(argv)
    try:
        config = EmulatorConfig.from_env(**vars(args))
    except ValueError as exc:
        print(f"acs_emulator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per report POST is noise
    logging.getLogger(__name__).info(
        "Serving on http://%s:%d (reports to %s)", config.host, config.port, config.webhook_url or "nowhere"
    )
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
