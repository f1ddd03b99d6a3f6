"""Settings come from the environment; each case runs in a fresh interpreter."""

import json
import secrets
import subprocess
import sys

from tests.conftest import ROOT

PRODUCTION = {"DEBUG": "false", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "classifier.example.com"}


def _settings(env: dict[str, str], expr: str) -> subprocess.CompletedProcess[str]:
    code = f"import django, json; django.setup(); from django.conf import settings as s; print(json.dumps({expr}))"
    base = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "classifier_site.settings",
        "VAR_DIR": env.pop("VAR_DIR"),
    }
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base | env, capture_output=True, text=True)


def test_no_variables_means_sqlite_embedded_broker_and_local_media(tmp_path):
    run = _settings(
        {"VAR_DIR": str(tmp_path)},
        "[s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, str(s.MEDIA_ROOT), s.DEBUG]",
    )
    engine, broker, media, debug = json.loads(run.stdout)
    assert engine == "django.db.backends.sqlite3"
    assert broker == f"sqla+sqlite:///{tmp_path}/celery-broker.sqlite3"
    assert media == f"{tmp_path}/media" and debug is True


def test_production_parts_are_switched_on_by_variables(tmp_path):
    env = {"VAR_DIR": str(tmp_path), "DATABASE_URL": "postgres://u:p@db:5432/site", "CELERY_BROKER_URL": "redis://redis:6379/0",
           "AWS_STORAGE_BUCKET_NAME": "media", "AWS_S3_ENDPOINT_URL": "http://minio:9000"}  # fmt: skip
    run = _settings(env, "[s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.STORAGES['default']['BACKEND']]")
    assert json.loads(run.stdout) == [
        "django.db.backends.postgresql",
        "redis://redis:6379/0",
        "storages.backends.s3.S3Storage",
    ]


def test_production_refuses_to_start_without_secret_key_or_hosts(tmp_path):
    no_key = _settings({"VAR_DIR": str(tmp_path), "DEBUG": "false", "ALLOWED_HOSTS": "a.example"}, "1")
    assert no_key.returncode != 0 and "set SECRET_KEY" in no_key.stderr
    no_hosts = _settings({"VAR_DIR": str(tmp_path), "DEBUG": "false", "SECRET_KEY": secrets.token_urlsafe(50)}, "1")
    assert no_hosts.returncode != 0 and "set ALLOWED_HOSTS" in no_hosts.stderr


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(tmp_path), **PRODUCTION}
    run = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                         cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr + run.stdout


def test_web_and_worker_processes_start_without_tensorflow_pyplot_or_scikit_learn(tmp_path):
    # Charts are drawn by workers; seaborn imports pyplot, which web processes must never hold.
    # TensorFlow loads with a worker's first training task; scikit-learn and scipy.stats with
    # the first sweep (they cost every web, worker and command process 1.6 s of start-up).
    heavy = ("tensorflow", "keras", "matplotlib.pyplot", "sklearn", "scipy.stats")
    code = ("import django, sys; django.setup(); import classifier_site.urls, classifier_site.wsgi; "
            "from classifier_site.celery import app; app.loader.import_default_modules(); "
            f"print(*(m in sys.modules for m in {heavy!r}))")  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "classifier_site.settings"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.stdout.split() == ["False"] * len(heavy), run.stderr


def test_migrations_are_complete(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
                         cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_boolean_that_is_not_one_stops_start_up_naming_the_variable(tmp_path):
    typo = _settings({"VAR_DIR": str(tmp_path), "DEBUG": "ture"}, "1")
    assert typo.returncode != 0 and "DEBUG='ture' is not true or false" in typo.stderr
    gate = _settings({"VAR_DIR": str(tmp_path), "PROMOTION_GATE": "sometimes"}, "1")
    assert gate.returncode != 0 and "PROMOTION_GATE='sometimes'" in gate.stderr
    spelled = _settings({"VAR_DIR": str(tmp_path), **PRODUCTION, "DEBUG": "No", "PROMOTION_GATE": "0"},
                        "[s.DEBUG, s.PROMOTION_GATE]")  # fmt: skip
    assert json.loads(spelled.stdout) == [False, False], spelled.stderr
    empty = _settings({"VAR_DIR": str(tmp_path), "DEBUG": "", "PROMOTION_GATE": " "}, "[s.DEBUG, s.PROMOTION_GATE]")
    assert json.loads(empty.stdout) == [True, True]  # empty means the default


def test_secrets_can_come_from_files(tmp_path):
    key, url = secrets.token_urlsafe(50), "postgres://u:s3cret@db:5432/site"
    (tmp_path / "key").write_text(key + "\n")  # as `docker secret` and Kubernetes write them
    (tmp_path / "db").write_text(url)
    env = {"VAR_DIR": str(tmp_path), **PRODUCTION, "SECRET_KEY": "", "SECRET_KEY_FILE": str(tmp_path / "key"),
           "DATABASE_URL_FILE": str(tmp_path / "db")}  # fmt: skip
    run = _settings(env, "[s.SECRET_KEY, s.DATABASES['default']['PASSWORD']]")
    assert json.loads(run.stdout) == [key, "s3cret"], run.stderr
    both = _settings({**env, "VAR_DIR": str(tmp_path), "SECRET_KEY": key}, "1")
    assert both.returncode != 0 and "Set SECRET_KEY or SECRET_KEY_FILE, not both." in both.stderr
    missing = _settings({**env, "VAR_DIR": str(tmp_path), "SECRET_KEY_FILE": str(tmp_path / "nope")}, "1")
    assert missing.returncode != 0 and "SECRET_KEY_FILE=" in missing.stderr and "cannot be read" in missing.stderr


def test_loading_the_settings_creates_no_folder_and_opens_no_database(tmp_path):
    var = tmp_path / "var"
    run = _settings(
        {"VAR_DIR": str(var), "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"},
        "[s.DATABASES['default']['PORT'], __import__('django.db', fromlist=['x']).connection.connection is None]",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [1, True]  # port 1 has no server: any connection attempt would have failed
    assert not var.exists()


def test_manage_py_creates_the_folders_it_writes_to(tmp_path):
    var = tmp_path / "var"
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(var)}
    run = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert var.is_dir() and (var / "staticfiles").is_dir()
