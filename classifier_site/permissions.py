"""Who may do what. Staff users are the site's admins."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and getattr(user, "is_staff", False))


def admin_user(request: HttpRequest) -> User:
    """The request's user, who must be an admin (staff)."""
    user = request.user
    if not isinstance(user, User) or not is_admin(user):
        raise PermissionDenied("Admins only.")
    return user
