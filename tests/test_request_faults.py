"""Requests under abuse and faults (issue 16, items 11 and 14): bodies refused from their
headers, before anything reads them; a database that is down answers 503, JSON on the API;
the schema documents 401/403/503."""

import socket
import uuid
from urllib.parse import urlparse

import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from django.test import Client

from datasets.services import dataset_create
from tests.faults import CutProxy

HUGE = 200 * 1024 * 1024  # what the client claims to send; it sends a few bytes and waits


def _answer_before_the_body(url: str, path: str, *, cookie: str = "", headers: str = "") -> int:
    """POST `path` claiming a 200 MB body, send 20 bytes of it, and read the status line. A
    server that reads the body first never answers: the socket times out."""
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {HUGE}\r\n"
            + (f"Cookie: {cookie}\r\n" if cookie else "")
            + headers
            + "\r\n"
        )
        sock.sendall(head.encode() + b"--xyz\r\nContent-Dispo")
        try:
            status_line = sock.recv(4096).split(b"\r\n", 1)[0]
        except TimeoutError:
            pytest.fail(f"{path}: no answer in 10 s: the server is reading the 200 MB body")
    return int(status_line.split()[1])


@pytest.mark.django_db(transaction=True)
def test_bodies_are_refused_by_size_and_sender_before_they_are_read(live_server, admin_user):
    """An anonymous 200 MB multipart POST to the login page, /predict/ or an upload page was
    spooled to disk in full before the 403 or 413 (Django's CSRF check parses it first)."""
    dataset = dataset_create(name="colours")
    upload_page = f"/datasets/{dataset.pk}/upload/"
    url = live_server.url
    assert _answer_before_the_body(url, "/accounts/login/") == 413  # no uploads there: MAX_BODY_BYTES
    assert _answer_before_the_body(url, "/predict/") == 413  # past PREDICT_MAX_UPLOAD_BYTES
    assert _answer_before_the_body(url, upload_page) == 403  # anonymous: no uploads at all
    assert _answer_before_the_body(url, "/api/v1/imports/") == 401
    admin = Client()
    admin.force_login(admin_user)
    session = f"sessionid={admin.cookies['sessionid'].value}"
    # Signed in: still refused where no upload is taken (a JSON route, past MAX_BODY_BYTES).
    assert _answer_before_the_body(url, "/api/v1/datasets/", cookie=session) == 413
    assert _answer_before_the_body(url, "/predict/", headers="Transfer-Encoding: chunked\r\n") == 411


@pytest.mark.django_db
def test_a_small_anonymous_post_still_reaches_the_login_page(client, admin_user):
    admin_user.set_password("right-password-123")
    admin_user.save()
    response = client.post("/accounts/login/", {"username": admin_user.username, "password": "right-password-123"})
    assert response.status_code == 302


@pytest.fixture
def database_down(transactional_db):
    """Cuts the site's database connection for real: PostgreSQL through a proxy on loopback
    that is then cut; SQLite by pointing at a file that cannot be opened."""
    saved = dict(connection.settings_dict)
    proxy = None
    connection.close()
    if connection.vendor == "postgresql":
        proxy = CutProxy((saved["HOST"] or "127.0.0.1", int(saved["PORT"] or 5432)))
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port))
        with connection.cursor() as cursor:  # through the proxy: it works
            cursor.execute("SELECT 1")
        connection.close()
        proxy.cut()
    else:
        connection.settings_dict["NAME"] = "/nonexistent-folder/db.sqlite3"
    yield
    connection.close()
    connection.settings_dict.clear()
    connection.settings_dict.update(saved)
    if proxy is not None:
        proxy.close()


def test_with_the_database_down_the_api_answers_json_503_and_pages_a_503_page(roles, database_down):
    admin = roles["admin"]
    admin.raise_request_exception = False  # as a real server: the handler's answer, not the exception
    api = admin.get("/api/v1/datasets/")
    assert api.status_code == 503 and api["Content-Type"] == "application/json"
    assert api.json() == {"detail": "The database is unavailable right now; try again shortly."}
    assert api["Retry-After"] == "5"
    page = admin.get("/datasets/")
    assert page.status_code == 503 and b"Unavailable for a moment" in page.content


def test_the_schema_documents_401_403_and_503_on_every_operation(tmp_path):
    schema = tmp_path / "schema.yaml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(schema))
    paths = yaml.safe_load(schema.read_text())["paths"]
    operations = [(path, method, op) for path, item in paths.items() for method, op in item.items()]
    assert len(operations) > 40
    for path, method, operation in operations:
        assert {"401", "403", "503"} <= set(operation["responses"]), (path, method)


@pytest.mark.django_db
def test_wrong_passwords_in_a_row_lock_that_login_out(client, admin_user, settings):
    """Issue 16, item 13: 30 wrong passwords in a row met no lockout."""
    admin_user.set_password("right-password-123")
    admin_user.save()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        wrong = client.post("/accounts/login/", {"username": admin_user.username, "password": "guess"})
        assert wrong.status_code == 200  # the form again, saying the password is wrong
    locked = client.post("/accounts/login/", {"username": admin_user.username, "password": "guess"})
    assert locked.status_code == 429 and b"Too many wrong passwords" in locked.content
    right = client.post("/accounts/login/", {"username": admin_user.username, "password": "right-password-123"})
    assert right.status_code == 429  # even the right password, until the lockout ends
    other = Client(REMOTE_ADDR="10.0.0.9")  # the same user from elsewhere is not locked out
    assert (
        other.post("/accounts/login/", {"username": admin_user.username, "password": "right-password-123"}).status_code
        == 302
    )


def test_a_throttle_counts_once_across_processes(tmp_path):
    """Issue 16, item 13: the API throttle counted per process (2 x 1,200/min), not per user."""
    import subprocess
    import sys

    from classifier_site import throttling
    from tests.conftest import ROOT, subprocess_env

    scope = f"test-{uuid.uuid4().hex}"
    assert [throttling.take(scope, 7, 3, 3600).allowed for _ in range(2)] == [True, True]
    code = (
        "import django; django.setup(); from classifier_site import throttling; "
        f"print([throttling.take({scope!r}, 7, 3, 3600).allowed for _ in range(2)])"
    )
    env = subprocess_env() | {"DJANGO_SETTINGS_MODULE": "classifier_site.settings"}
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert other.stdout.strip().splitlines()[-1] == "[True, False]", other.stderr[-2000:]
    assert throttling.take(scope, 7, 3, 3600).allowed is False


def test_a_process_takes_leases_of_a_high_limit(tmp_path):
    from django.core.cache import caches

    from classifier_site import throttling

    scope = f"lease-{uuid.uuid4().hex}"
    window = int(__import__("time").time() // 3600)
    key = f"throttle:{scope}:7:{window}"
    assert all(throttling.take(scope, 7, 1000, 3600).allowed for _ in range(10))
    assert caches["throttle"].get(key) == 10  # one shared add for ten requests
    assert throttling.take(scope, 7, 1000, 3600).allowed
    assert caches["throttle"].get(key) == 20


@pytest.mark.django_db
def test_imports_are_throttled_per_user_on_the_page_and_the_api(admin_client, admin_user, settings, tmp_path):
    """Issue 16, item 13: imports had no throttle."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    from classifier_site.throttling import forget_leases
    from tests.images import class_folder_zip

    settings.IMPORT_THROTTLE_RATE = "2/hour"
    forget_leases()
    dataset = dataset_create(name=f"throttled-{tmp_path.name}")
    archive = class_folder_zip(tmp_path / "a.zip", per_class=1).read_bytes()
    api = APIClient()
    api.force_authenticate(admin_user)

    def api_upload():
        upload = SimpleUploadedFile("a.zip", archive)
        return api.post("/api/v1/imports/", {"dataset": dataset.pk, "archive": upload}, format="multipart")

    assert api_upload().status_code == 201
    page = admin_client.post(f"/datasets/{dataset.pk}/upload/", {"archive": SimpleUploadedFile("a.zip", archive)})
    assert page.status_code == 302  # the second of two: to the import's page
    refused = api_upload()
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    again = admin_client.post(f"/datasets/{dataset.pk}/upload/", {"archive": SimpleUploadedFile("a.zip", archive)})
    assert again.status_code == 429 and "Too many uploads" in again.content.decode()
    assert admin_client.get(f"/datasets/{dataset.pk}/upload/").status_code == 200  # the form itself costs nothing
