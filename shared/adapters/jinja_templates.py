"""Templates from a folder in the repo, rendered with sandboxed Jinja2.

    templates/<name>/manifest.json   {"version": 3, "approved": true, "sender": "...", "defaultLocale": "en"}
    templates/<name>/subject.txt     email subject   (locale variants: subject.fr.txt, subject.fr-CA.txt)
    templates/<name>/text.txt        email plain text
    templates/<name>/body.html       email HTML (autoescaped)
    templates/<name>/sms.txt         SMS text

A template serves email when it has a subject, SMS when it has ``sms.txt``. Rendering is
sandboxed (templates cannot reach Python internals) and strict: a variable the data does not
provide is an error, not an empty string. A locale falls back from ``fr-CA`` to ``fr`` to the
template's default.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError as JinjaError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from ..domain.model import Channel
from ..service.ports import RenderedTemplate, TemplateError

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class JinjaTemplates:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._text = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
        self._html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)

    @lru_cache(maxsize=256)
    def _manifest(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name / "manifest.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def _file(self, name: str, stem: str, suffix: str, locale: str, default: str) -> tuple[str, str] | None:
        """The best file for a locale, and the locale it is for."""
        parts = locale.split("-")
        candidates = ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]
        for candidate in candidates:
            path = self.folder / name / f"{stem}.{candidate}{suffix}"
            if path.is_file():
                return path.read_text(encoding="utf-8"), candidate
        path = self.folder / name / f"{stem}{suffix}"
        return (path.read_text(encoding="utf-8"), default) if path.is_file() else None

    def _render(self, source: str, data: dict[str, Any], *, html: bool, what: str) -> str:
        env = self._html if html else self._text
        try:
            return env.from_string(source).render(**data).strip()
        except UndefinedError as exc:
            raise TemplateError("/template/data", f"{what}: {exc.message}") from None
        except SecurityError as exc:
            raise TemplateError("/template/name", f"{what}: the template does something not allowed ({exc})") from None
        except JinjaError as exc:
            raise TemplateError("/template/name", f"{what} cannot be rendered: {exc}") from None
        except Exception as exc:  # a filter or test failing on the data given
            raise TemplateError("/template/data", f"{what} cannot be rendered with this data: {type(exc).__name__}") from None

    def render(
        self, *, name: str, channel: Channel, data: dict[str, Any], version: int | None = None, locale: str | None = None
    ) -> RenderedTemplate:
        if not _NAME.match(name):
            raise TemplateError("/template/name", "is not a template name (lower-case letters, digits and hyphens)")
        manifest = self._manifest(name)
        if manifest is None:
            raise TemplateError("/template/name", f"no template named {name!r}")
        if manifest.get("approved") is not True:
            raise TemplateError("/template/name", f"template {name!r} is not approved for use")
        current = int(manifest.get("version", 1))
        if version is not None and version != current:
            raise TemplateError("/template/version", f"template {name!r} is at version {current}, not {version}")
        default = str(manifest.get("defaultLocale", "en"))
        if locale is not None and not _LOCALE.match(locale):
            raise TemplateError("/template/locale", "is not a locale tag such as en or fr-CA")
        wanted = locale or default
        sender = manifest.get("sender")

        if channel is Channel.EMAIL:
            subject = self._file(name, "subject", ".txt", wanted, default)
            if subject is None:
                raise TemplateError("/template/name", f"template {name!r} has no email content")
            text = self._file(name, "text", ".txt", wanted, default)
            html = self._file(name, "body", ".html", wanted, default)
            if text is None and html is None:
                raise TemplateError("/template/name", f"template {name!r} has a subject but no text or html")
            return RenderedTemplate(
                name=name,
                version=current,
                locale=subject[1],
                sender=sender.get("email") if isinstance(sender, dict) else sender,
                subject=self._render(subject[0], data, html=False, what="subject"),
                text=self._render(text[0], data, html=False, what="text") if text else None,
                html=self._render(html[0], data, html=True, what="html") if html else None,
            )
        sms = self._file(name, "sms", ".txt", wanted, default)
        if sms is None:
            raise TemplateError("/template/name", f"template {name!r} has no SMS content")
        return RenderedTemplate(
            name=name,
            version=current,
            locale=sms[1],
            sender=sender.get("sms") if isinstance(sender, dict) else None,
            message=self._render(sms[0], data, html=False, what="message"),
        )
