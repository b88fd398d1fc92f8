"""Checkpoints in object storage: ``gs://`` (fake-gcs-server) and ``s3://`` (moto).

Both servers run on 127.0.0.1, started and stopped by this module (see
``integration/object_stores.py``). The training job (``workers/object_store_job.py``) saves
with an async ``ocp.CheckpointManager`` straight to the bucket, is SIGKILLed while a save is
in flight, and a fresh process resumes from the bucket: what it restores, and every record
and model value after it, equal an uninterrupted run's bit for bit. What to expect is read
from what the bucket holds after the kill (which steps were committed), never from timing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from integration.object_stores import FakeGcs, MotoS3
from integration.workers.object_store_stream import reference_logs
from integration.workers.streams import read_logs

STEPS = 10
SAVE_EVERY = 3
KILL_AT = 6
"""The save during which the job is killed: step 3 is committed by then (a save waits for the
previous one), step 6 may or may not be."""

DATARAX_ITEMS = {"gs": ("data", "batch", "sharded"), "s3": ("data", "batch")}
ITEMS = {"gs": ("model", *DATARAX_ITEMS["gs"]), "s3": DATARAX_ITEMS["s3"]}
"""What each store's job saves. On S3, Orbax 0.12.8 cannot write tensorstore arrays (see
``test_orbax_cannot_write_arrays_to_s3``): no model and no multi-device batch there."""


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    with FakeGcs(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with MotoS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


def committed_steps(server: FakeGcs | MotoS3, bucket: str, run: str) -> list[int]:
    """The steps under ``bucket/run`` that carry Orbax's commit marker, read from the store."""
    return sorted(
        int(name.split("/")[1])
        for name in server.list_objects(bucket, f"{run}/")
        if name.count("/") == 2 and name.endswith("/commit_success.txt")
    )


def restored_report(lines: list[str]) -> dict[str, Any]:
    (line,) = [line for line in lines if line.startswith("restored ")]
    return json.loads(line.removeprefix("restored "))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", ["gs", "s3"])
def test_killed_mid_save_resumes_exactly_from_the_bucket(store, gcs, s3, processes, tmp_path):
    server = gcs if store == "gs" else s3
    bucket = f"datarax-kill-{store}"
    server.create_bucket(bucket)
    processes.env.update(server.env())
    items = ITEMS[store]
    job = ["--directory", f"{store}://{bucket}/run", "--items", ",".join(items),
           "--steps", STEPS, "--save-every", SAVE_EVERY]  # fmt: skip
    if store == "s3":
        job.append("--commit-file")  # s3fs cannot rename a directory
    expected = reference_logs(STEPS)

    first = processes.worker("object_store_job", *job, "--log", tmp_path / "first.jsonl",
                             "--announce-save", KILL_AT)  # fmt: skip
    first.wait_for_line(f"saving {KILL_AT}", timeout=120)
    first.kill()
    assert first.wait(timeout=30) == -9
    committed = committed_steps(server, bucket, "run")
    assert committed[-1] in (KILL_AT - SAVE_EVERY, KILL_AT), committed
    assert committed == list(range(0, committed[-1] + 1, SAVE_EVERY)), committed
    partial = server.list_objects(bucket, f"run/{KILL_AT}/")
    print(f"{store}: killed in the save of step {KILL_AT}; committed {committed}; "
          f"{len(partial)} objects under run/{KILL_AT}/")  # fmt: skip

    second = processes.worker("object_store_job", *job, "--log", tmp_path / "second.jsonl",
                              "--resume", *(["--damage"] if store == "gs" else []))  # fmt: skip
    assert second.wait(timeout=180) == 0, second.output
    saved = committed[-1]
    assert f"start {saved + 1}" in second.lines, second.output

    # What came back is the state of step `saved`, exactly.
    restored = restored_report(second.lines)
    assert restored["step"] == saved
    fields = ("index", "epoch", "global_step", "batch_idx", "rng_key")
    for name in ("batch", "sharded"):
        if name in items:
            assert restored[name] == {f: expected[saved][f] for f in fields}, name
    if "sharded" in items:
        assert restored["sharded_devices"] == 8
    if "model" in items:
        assert restored["model"] == expected[saved]["model"]

    first_logs = read_logs(tmp_path / "first.jsonl")
    second_logs = read_logs(tmp_path / "second.jsonl")
    assert sorted(first_logs) == list(range(KILL_AT + 1))
    assert sorted(second_logs) == list(range(saved + 1, STEPS))
    for step, log in [*first_logs.items(), *second_logs.items()]:
        if "model" not in items:  # not saved: the resumed run's model starts again from 0
            log, expected[step] = (
                {k: v for k, v in d.items() if k != "model"} for d in (log, expected[step])
            )
        assert log == expected[step], f"step {step}"

    if store == "gs":
        assert_damage_is_an_error(second.lines, DATARAX_ITEMS[store])


def assert_damage_is_an_error(lines: list[str], items: tuple[str, ...]) -> None:
    """Each ``damaged <item> <file>: <error>`` line reports a MetadataCheckpointError naming
    the damaged file (the worker writes the error's message)."""
    damaged = [line for line in lines if line.startswith("damaged ")]
    for item in items:
        assert any(line.startswith(f"damaged {item} process_0.jsonl: ") for line in damaged)
    assert len(damaged) == len(items) + 1, damaged  # and one array file of the sharded item
    for line in damaged:
        _, _, rest = line.partition(" ")
        _, name, error = rest.split(" ", 2)
        assert "restored without an error" not in error, line
        assert name.rstrip(":") in error, line
    assert "repaired" in lines
