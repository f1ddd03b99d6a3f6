"""Who may do what. Staff users are the site's admins."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and getattr(user, "is_staff", False))
