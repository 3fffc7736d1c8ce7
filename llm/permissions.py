"""Who may do what: one table of rights, used by the API, the pages and admin.

A right has a name (what a view declares), the API-key scope that grants it, and the user
permissions that grant it to a logged-in person; roles are Django groups holding those
permissions (created by migration 0012 and again after a test flushes the tables).

- A DRF view declares `required_right`: one right name, or a dict by HTTP method
  (`{"GET": "read", "POST": "manage"}`); `HasRight` (REST_FRAMEWORK's default permission)
  checks it. A view that declares nothing is refused to everyone but superusers, so a new view
  cannot be open by mistake (tests/test_access_matrix.py fails when one is in the urlconf).
- A page calls `page_refusal(request, right)`, or is wrapped in `@requires_right(...)`.
- A missing right answers 403 naming it: the scope for a key (`"missing": "read_text"`), the
  permission and the role for a user (`"missing": "llm.view_prompt_text", "role": "Analyst"`).

Every active logged-in user has `read` (the Viewer's rights): a user given no group sees the
dashboards and figures and nothing more. Superusers have every right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib.auth.models import Permission
from django.contrib.auth.views import redirect_to_login
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework import exceptions, permissions
from rest_framework.request import Request

from llm.models import APIKey

Scope = APIKey.Scope


@dataclass(frozen=True)
class Right:
    name: str
    scope: str  # the API-key scope that grants it
    permissions: tuple[str, ...]  # the user permissions that grant it (all of them); () = any logged-in user
    role: str  # the first role that has it, for messages
    does: str  # what it allows, for messages: "needs the Analyst role to <does>"
    also_by: tuple[str, ...] = ()  # other scopes that grant it too


RIGHTS: dict[str, Right] = {
    right.name: right
    for right in [
        # Text is read on the logs it belongs to: a read_text key reads them too.
        Right("read", Scope.READ, (), "Viewer", "see dashboards and figures", also_by=(Scope.READ_TEXT,)),
        Right("read_text", Scope.READ_TEXT, ("llm.view_prompt_text",), "Analyst", "see prompt and response text"),
        Right(
            "export", Scope.READ_TEXT, ("llm.export_logs", "llm.view_prompt_text"), "Analyst", "export logs with text"
        ),
        Right("feedback", Scope.READ_TEXT, ("llm.give_feedback",), "Analyst", "rate calls"),
        Right("prompt", Scope.PROMPT, ("llm.use_playground",), "Operator", "send prompts"),
        Right("manage", Scope.MANAGE, ("llm.manage_alerting",), "Operator", "change alerting"),
        Right("ingest", Scope.INGEST, ("llm.ingest_events",), "Admin", "report calls"),
    ]
}
# The rights every view may name (the shared vocabulary, equal to the key scopes), and the finer
# ones of this module's own views (export and feedback map to the read_text scope for keys).
SCOPE_RIGHTS = tuple(Scope.values)


def _model_permissions(model: str, actions: tuple[str, ...] = ("add", "change", "delete", "view")) -> list[str]:
    app_label, name = model.split(".")
    return [f"{app_label}.{action}_{name}" for action in actions]


VIEWER: list[str] = []
ANALYST = [
    *VIEWER,
    "llm.view_prompt_text",
    "llm.export_logs",
    "llm.give_feedback",
    # Django admin (for a staff member): the calls, with their text, and the ratings.
    "llm.view_llmrequestlog",
    "llm.view_userfeedback",
]
OPERATOR = [
    *ANALYST,
    "llm.use_playground",
    "llm.manage_alerting",
    *_model_permissions("llm.alertrule"),
    *_model_permissions("llm.alertlog", ("change", "view")),
]
ADMIN = [
    *OPERATOR,
    "llm.ingest_events",
    *_model_permissions("llm.apikey"),
    *_model_permissions("llm.modelprice"),
    *_model_permissions("llm.dashboardsettings"),
    *_model_permissions("llm.llmrequestlog", ("delete", "view")),
    *_model_permissions("llm.userfeedback"),
    *_model_permissions("auth.user"),
    *_model_permissions("auth.group", ("view",)),
]
# Role (Django group) name -> its permissions, "app_label.codename".
ROLES: dict[str, list[str]] = {"Viewer": VIEWER, "Analyst": ANALYST, "Operator": OPERATOR, "Admin": ADMIN}


def install_roles(apps: Any, only_missing: bool = False) -> None:
    """Create the role groups with their permissions (`apps`: a migration's or the real registry).
    With only_missing, a group that exists is left as an admin may have changed it."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    wanted = {name for names in ROLES.values() for name in names}
    found = {
        f"{permission.content_type.app_label}.{permission.codename}": permission
        for permission in Permission.objects.select_related("content_type").filter(
            codename__in={name.split(".")[1] for name in wanted}
        )
    }
    for role, names in ROLES.items():
        group, created = Group.objects.get_or_create(name=role)
        if only_missing and not created:
            continue
        group.permissions.add(*[found[name] for name in names if name in found])


def roles_after_migrate(sender: Any, apps: Any = None, **kwargs: Any) -> None:
    """post_migrate: the groups again after a flush (a transactional test empties auth_group).

    Sent once per app: only for ours, after the auth app's handler has made our permissions."""
    if getattr(sender, "name", None) != "llm":
        return
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    try:
        apps.get_model("auth", "Group")
        apps.get_model("llm", "APIKey")
    except LookupError:
        return
    install_roles(apps, only_missing=True)


# Rights of callers.


def permission_names(user: Any) -> set[str]:
    """The user's permissions, its own and its roles', "app_label.codename", in one query (Django's
    ModelBackend asks two), kept on the user object for the rest of the request."""
    cached = getattr(user, "_llm_permission_names", None)
    if cached is None:
        rows = (
            Permission.objects.filter(Q(user=user) | Q(group__user=user))
            .values_list("content_type__app_label", "codename")
            .distinct()
        )
        cached = user._llm_permission_names = {f"{app_label}.{codename}" for app_label, codename in rows}
    return cached


def user_has(user: Any, right: Right) -> bool:
    if not (user and user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or set(right.permissions) <= permission_names(user)


def key_has(api_key: APIKey, right: Right) -> bool:
    return any(api_key.has_scope(scope) for scope in (right.scope, *right.also_by))


def caller_has(request: HttpRequest | Request, right_name: str) -> bool:
    """Whether the request's API key (scope) or user (permissions) has the right."""
    right = RIGHTS[right_name]
    auth = getattr(request, "auth", None)
    if isinstance(auth, APIKey):
        return key_has(auth, right)
    return user_has(request.user, right)


def role_message(right: Right) -> str:
    if not right.permissions:
        return f"Needs the {right.role} role to {right.does}."
    noun = "permissions" if len(right.permissions) > 1 else "permission"
    return f"Needs the {right.role} role to {right.does} ({noun} {' and '.join(right.permissions)})."


class MissingRight(exceptions.PermissionDenied):
    """403 naming what is missing: {"error": ..., "missing": scope or permission[, "role": ...]}."""

    def __init__(self, request: Request, right_name: str | None) -> None:
        if right_name is None:
            detail = {"error": "This endpoint declares no right: only superusers may use it.", "missing": "superuser"}
        elif isinstance(request.auth, APIKey):
            right = RIGHTS[right_name]
            detail = {
                "error": f"This API key lacks the scope “{right.scope}” (needed to {right.does}).",
                "missing": right.scope,
            }
        else:
            right = RIGHTS[right_name]
            held = permission_names(request.user)
            missing = next((name for name in right.permissions if name not in held), right.role)
            detail = {"error": role_message(right), "missing": missing, "role": right.role}
        super().__init__(detail)


NOT_DECLARED = object()


def right_for(view: Any, method: str) -> str | None | object:
    """The right name `view` declares for `method`; NOT_DECLARED when it declares none for a
    method it serves; None when the method is one the view does not serve (it answers 405)."""
    declared = getattr(view, "required_right", NOT_DECLARED)
    if isinstance(declared, dict):
        for name in (method, "GET" if method in ("HEAD", "OPTIONS") else method):
            if name in declared:
                return declared[name]
        return NOT_DECLARED if hasattr(view, method.lower()) else None
    return declared


class HasRight(permissions.BasePermission):
    """REST_FRAMEWORK's default permission: a logged-in user or an API key (else 401), holding the
    right the view declares for the method (else 403 naming the missing scope, or permission and role)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        is_key = isinstance(request.auth, APIKey)
        if not (is_key or (request.user and request.user.is_authenticated)):
            return False
        right_name = right_for(view, request.method)
        if right_name is None:
            return True  # a method the view does not serve: DRF answers 405
        if right_name is NOT_DECLARED:
            if not is_key and request.user.is_superuser:
                return True
            raise MissingRight(request, None)
        if not caller_has(request, right_name):
            raise MissingRight(request, right_name)
        return True


def require(request: Request, right_name: str) -> None:
    """Inside a view: a 403 naming the right unless the caller has it (a parameter that needs more
    than the endpoint, e.g. `search` over the text)."""
    if not caller_has(request, right_name):
        raise MissingRight(request, right_name)


# Pages.


@dataclass(frozen=True)
class Access:
    """What a logged-in user may do, for templates: `access.read_text`, `access.reason.manage`."""

    allowed: dict[str, bool]
    reason: dict[str, str]

    def __getattr__(self, name: str) -> bool:
        try:
            return self.allowed[name]
        except KeyError:
            raise AttributeError(name) from None


def access_for(user: Any) -> Access:
    allowed = {name: user_has(user, right) for name, right in RIGHTS.items()}
    reasons = {name: f"Needs the {right.role} role." for name, right in RIGHTS.items()}
    return Access(allowed=allowed, reason=reasons)


def refused_page(request: HttpRequest, right_name: str) -> HttpResponse:
    right = RIGHTS[right_name]
    context = {"message": role_message(right), "role": right.role, "access": access_for(request.user)}
    return render(request, "403.html", context, status=403)


def requires_right(right_name: str) -> Callable:
    """A page for logged-in users with this right: anonymous -> the login page, without the right
    -> a plain 403 page naming the role."""
    RIGHTS[right_name]  # a typo fails at import, not at the first request

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not user_has(request.user, RIGHTS[right_name]):
                return refused_page(request, right_name)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
