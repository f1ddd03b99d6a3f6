"""Requests under abuse and faults (issue 16, items 11 and 14): bodies refused from their
headers, before anything reads them; a database that is down answers 503, JSON on the API;
the schema documents 401/403/503."""

import socket
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
