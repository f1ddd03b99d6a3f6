import io
import os
import secrets
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from PIL import Image

from datasets.models import Dataset
from datasets.services import dataset_create, images_add

DEMO_NAME = "digits (demo)"


class Command(BaseCommand):
    help = "Create the demo dataset (scikit-learn's handwritten digits) and an admin account. Safe to re-run."

    def handle(self, *args: Any, **options: Any) -> None:
        self._seed_dataset()
        self._seed_admin()

    def _seed_dataset(self) -> None:
        if Dataset.objects.filter(name=DEMO_NAME).exists():
            self.stdout.write(f"Demo dataset {DEMO_NAME!r} already exists.")
            return
        dataset = dataset_create(name=DEMO_NAME, description="1,797 handwritten digits (8x8, shown at 32x32).")
        report = images_add(dataset=dataset, items=list(digit_images()))
        self.stdout.write(f"Created demo dataset {DEMO_NAME!r}: {report.imported} images in 10 classes.")

    def _seed_admin(self) -> None:
        users = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        if users.objects.filter(username=username).exists():
            self.stdout.write(f"Admin account {username!r} already exists.")
            return
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or secrets.token_urlsafe(12)
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
        users.objects.create_superuser(username=username, email=email, password=password)
        if "DJANGO_SUPERUSER_PASSWORD" not in os.environ:
            # Printed once, and kept where only this machine's user can read it.
            path = settings.VAR_DIR / "initial-admin-password.txt"
            path.write_text(f"{username}\n{password}\n")
            path.chmod(0o600)
            self.stdout.write(self.style.SUCCESS(f"Created admin account: {username} / {password} (also in {path})"))
        else:
            self.stdout.write(self.style.SUCCESS(f"Created admin account {username!r}."))


def digit_images() -> "list[tuple[str, bytes, str]]":
    """scikit-learn's digits as 32x32 dark-on-light PNGs: real images, no download."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    items = []
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = (255 - pixels * (255 / 16)).astype(np.uint8)
        img = Image.fromarray(grey).resize((32, 32), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        items.append((f"digit-{i:04d}.png", buffer.getvalue(), str(target)))
    return items
