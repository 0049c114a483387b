"""A file uploaded through one web process is processed by a worker that does not share its
MAGEAGENT_FILES_DIR: web, worker and the simulator as processes, the bytes in an
S3-compatible store (moto's server, real HTTP), or in one directory both mount (a volume)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import API, Client, sim
from tests.stack import Stack, database_url, own_queue
from tests.tools.conftest import s3_bucket

# Each case starts a stack of its own (its processes' settings differ from the session's).
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(360)]

S3_ENV = {"MAGEAGENT_FILES_STORAGE": "s3", "MAGEAGENT_FILES_S3_REGION": "us-east-1",
          "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(params=["s3", "shared volume"])
def split_stack(request, django_db_setup, tmp_path) -> Iterator[tuple[Stack, str, list[Path]]]:
    """A stack whose worker and upload web process have different MAGEAGENT_FILES_DIRs,
    except where both mount one volume."""
    from django.db import connection

    web_dir, worker_dir = tmp_path / "web-files", tmp_path / "worker-files"
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_server")
        env = {**S3_ENV, "MAGEAGENT_FILES_S3_ENDPOINT_URL": endpoint, "MAGEAGENT_FILES_S3_BUCKET": s3_bucket(endpoint)}
    else:
        env, web_dir = {}, worker_dir
    # A queue of its own: the session stack's worker (another FILES_DIR) must not take its tasks.
    queue = own_queue("files")
    stack = Stack(database_url(connection.settings_dict),
                  {**env, "MAGEAGENT_FILES_DIR": str(worker_dir), "MAGEAGENT_QUEUE": queue}).start()
    try:
        upload_url = stack.start_extra_web("uploads", {"MAGEAGENT_FILES_DIR": str(web_dir)})
        yield stack, upload_url, [web_dir, worker_dir] if request.param == "s3" else []
    finally:
        stack.stop()


def files_in(directories: list[Path]) -> list[Path]:
    return [p for d in directories if d.exists() for p in d.rglob("*") if p.is_file()]


def test_a_worker_processes_a_file_another_web_process_received(split_stack, alice):
    _, upload_url, local_dirs = split_stack
    client = Client(upload_url, alice.key)
    uploaded = client.http.post(f"{API}/files", files={"file": ("minutes.txt", b"Decision: ship on Friday.",
                                                                "text/plain")})
    assert uploaded.status_code == 201, uploaded.text
    file_id = uploaded.json()["id"]
    call = sim(tool_calls=[{"name": "file_processing",
                            "arguments": {"operation": "extract_text", "file_id": file_id}}], tokens=3)

    task = client.wait_terminal(client.create(f"What was decided? {call}", tools=["file_processing"])["id"])

    [result] = [e for e in client.events(task["id"])["events"] if e["type"] == "tool_result"]
    assert task["status"] == "completed"
    assert result["ok"], result["content"]
    assert result["content"].strip() == "Decision: ship on Friday."
    assert files_in(local_dirs) == []  # on S3 nothing touched either process's disk
    assert client.http.delete(f"{API}/files/{file_id}").status_code == 204
    assert json.loads(client.http.get(f"{API}/files").text)["results"] == []
