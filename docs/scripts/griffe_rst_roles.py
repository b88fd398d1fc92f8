"""A griffe extension: Sphinx roles in docstrings become mkdocstrings cross-references.

The library's docstrings use Sphinx roles (``:class:`Metadata```, ``:meth:`create_metadata```)
as most Python docstrings do; mkdocstrings reads Markdown and would print them verbatim. This
extension rewrites each role, before the docstrings are rendered, into a link to the API page
that documents its target, or into plain code where no page documents it. A name is resolved
the way Python would in the docstring's scope (``obj.resolve``), then mapped from where it is
defined (``datarax.core._metadata.Metadata``) to where the API pages show it
(``datarax.core.metadata.Metadata``, a ``:::`` directive of ``docs/api/*.md``).

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Any

import griffe

API_PAGES = Path(__file__).resolve().parents[1] / "api"
_DIRECTIVE = re.compile(r"^:::[ \t]+(?P<path>[\w.]+)[ \t]*$", re.MULTILINE)

_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|attr|mod|data|exc|obj|const):`(?P<tilde>~?)(?P<name>[\w.]+)(?:\(\))?`"
)


class RstRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        public = _public_paths(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                link = functools.partial(_link, obj, public=public)
                obj.docstring.value = _ROLE.sub(link, obj.docstring.value)


def _public_paths(pkg: griffe.Module) -> dict[str, tuple[str, bool]]:
    """Canonical path -> (documented path, is a module), for every ``::: path`` of the API pages.

    Only what a page renders can be linked to: a role naming anything else stays plain code.
    """
    mapping: dict[str, tuple[str, bool]] = {}
    for page in sorted(API_PAGES.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            path = match["path"]
            if path != pkg.path and not path.startswith(pkg.path + "."):
                continue
            try:
                obj = pkg[path[len(pkg.path) + 1 :]] if path != pkg.path else pkg
            except KeyError:
                continue  # the page's build reports it
            mapping[obj.target_path if obj.is_alias else obj.path] = (path, obj.is_module)
    return mapping


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _link(obj: griffe.Object, match: re.Match[str], *, public: dict[str, tuple[str, bool]]) -> str:
    name = match["name"]
    shown = name.rsplit(".", 1)[-1] if match["tilde"] else name
    if match["role"] in ("func", "meth"):
        shown += "()" if match[0].endswith("()`") else ""
    target = _documented_path(obj, name, public)
    return f"[`{shown}`][{target}]" if target else f"`{shown}`"


def _documented_path(
    obj: griffe.Object, name: str, public: dict[str, tuple[str, bool]]
) -> str | None:
    """Where the API pages document ``name`` as seen from ``obj``; ``None`` if nowhere."""
    head, dot, rest = name.partition(".")
    candidates = [name]
    with contextlib.suppress(griffe.NameResolutionError, ValueError, AttributeError):
        candidates.insert(0, obj.resolve(head) + dot + rest)
    for path in candidates:
        # The longest documented prefix: a member of a documented class is on its page (a
        # module's page, rendered with members: false, shows none of its members).
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            documented = public.get(".".join(parts[:cut]))
            if documented is not None and (cut == len(parts) or not documented[1]):
                return ".".join([documented[0], *parts[cut:]])
    return None
