"""What each operation asks of a request before its body is read, read off the routes themselves.

A route declares its key check as a dependency (``app.deps``: ``ReadAccess``, ``TrainAccess``, ...) and
whether it starts a job (it depends on the job submitter). The gate (``app.limits``) must check the same
key before it reads a byte of the body, and hold a job's upload to the archive limit and the key's job
quota. So the gate's rules are derived here from the routes' dependencies once per app, instead of a
second list of paths that a new route could be left out of.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from app.deps import (
    get_submitter,
    require_admin_key,
    require_read_access,
    require_review_key,
    require_train_key,
)
from core.settings import Role

#: The key checks a route may depend on, by the role each asks for ("read" only with protect_reads).
ROLE_OF_CHECK: dict[Callable[..., Any], Role] = {
    require_read_access: "read",
    require_review_key: "review",
    require_train_key: "train",
    require_admin_key: "admin",
}
#: From weakest to strongest: a route with two checks asks for the stronger one.
ROLE_ORDER: tuple[Role, ...] = ("read", "review", "train", "admin")


@dataclass(frozen=True)
class OperationAccess:
    """One route's operations, as the gate sees them: the key role its dependencies check (None: no
    key), and whether it starts a job (its upload is an archive, under the key's job quota)."""

    path: str  # as the OpenAPI document names it
    pattern: re.Pattern[str]
    methods: frozenset[str]
    role: Role | None
    starts_job: bool

    def matches(self, method: str, path: str) -> bool:
        return method in self.methods and self.pattern.match(path) is not None

    def needed_role(self, *, protect_reads: bool) -> Role | None:
        """The role a request needs a key of (None: none); reads are open unless ``protect_reads``."""
        return None if self.role == "read" and not protect_reads else self.role


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _strongest(roles: set[Role]) -> Role | None:
    return max(roles, key=ROLE_ORDER.index) if roles else None


def operation_access(route: RouteContext) -> OperationAccess:
    """What a route's operations ask for, read off its dependencies with its router's included."""
    calls = set() if route.dependant is None else set(_calls(route.dependant))
    path = str(route.path_format)
    methods = set(route.methods or ())
    if "GET" in methods:
        methods.add("HEAD")  # answered by the GET route, so checked as it is
    return OperationAccess(
        path=path,
        # Routing's own pattern: converters such as {name:path} match as routing matches them.
        pattern=route.path_regex,
        methods=frozenset(methods),
        role=_strongest({role for check, role in ROLE_OF_CHECK.items() if check in calls}),
        starts_job=get_submitter in calls,
    )


def api_routes(app: Any) -> list[RouteContext]:
    """The API routes of ``app``, each as routing sees it: with the dependencies, path prefix and tags
    of the routers that include it."""
    return [route for route in iter_route_contexts(app.routes) if isinstance(route.original_route, APIRoute)]


def access_rules(app: Any) -> list[OperationAccess]:
    """The access of every API route of ``app``, in routing order; made once, kept on the app."""
    cached: list[OperationAccess] | None = getattr(app.state, "access_rules", None)
    if cached is None:
        cached = [operation_access(route) for route in api_routes(app)]
        app.state.access_rules = cached
    return cached


def access_of(app: Any, method: str, path: str) -> OperationAccess | None:
    """The operation that routing will pick for the request (the first route that matches, as
    Starlette routes), or None: routing answers those with 404 or 405."""
    return next((rule for rule in access_rules(app) if rule.matches(method, path)), None)


def needed_role(app: Any, method: str, path: str, *, protect_reads: bool) -> Role | None:
    """The role the route's own key check asks for (None: no key needed). The gate checks it as well,
    so that a request is refused before its body is read: the routes check it only after parsing."""
    rule = access_of(app, method, path)
    return None if rule is None else rule.needed_role(protect_reads=protect_reads)
