"""The audit log: every operator's action recorded by the service that performs it, in its own transaction."""
from __future__ import annotations

from ..models import AuditEntry
from .errors import NotPermitted

Action = AuditEntry.Action


def require_permission(user, permission: str, what: str) -> None:
    """Raise NotPermitted unless `user` holds `permission` (directly, through a group, or as a superuser).

    `user` None is the platform itself (a management command, a test): it may do anything.
    """
    if user is not None and not user.has_perm(permission):
        raise NotPermitted(f"you may not {what}: that needs the {permission} permission")


def audit_record(*, actor, action: str, target: str = "", filter: dict | None = None, count: int | None = None,
                 detail: dict | None = None) -> AuditEntry:
    """Record one operator's action; call it inside the transaction that performs the action, so that an action
    rolled back leaves no entry and an entry never lacks its action.

    `action` is an AuditEntry.Action; `target` names what was acted on as type:id (`queue:cpu`, `job:<id>`,
    `token:<prefix>`, `schedule:<name>`); a bulk action gives its `filter` instead and the jobs changed as `count`.
    `actor` None is the platform itself.
    """
    return AuditEntry.objects.create(
        actor=actor, actor_name=actor.get_username() if actor is not None else "", action=action,
        target=target[:300], filter=filter or {}, count=count, detail=detail or {})
