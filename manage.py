#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "classifier_site.settings")
    from django.core.management import execute_from_command_line

    from classifier_site.folders import ensure_folders

    ensure_folders()
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
