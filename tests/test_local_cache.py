"""A host's local caches are bounded (issue 17): past the budget, the least recently used
entries go; the entry in use, and any used in the last minutes, stay."""

import os
import shutil
import time
from pathlib import Path

import pytest

from classifier_site.local_cache import GRACE_SECONDS, LEFTOVER_SECONDS, cache_touch, cache_trim
from trainer.jobs.services import training_job_start
from trainer.jobs.snapshots import snapshot_arrays, training_cache_trim
from trainer.ml.config import TrainConfig
from trainer.registry.files import local_model_file


def _entry(folder: Path, name: str, size: int, age: float) -> Path:
    entry = folder / name
    entry.mkdir(parents=True)
    (entry / "data.npy").write_bytes(b"x" * size)
    stamp = time.time() - age
    os.utime(entry, (stamp, stamp))
    return entry


def test_the_least_recently_used_go_first_until_the_cache_fits(tmp_path):
    old, older, oldest = (_entry(tmp_path, n, 1000, age) for n, age in (("b", 2000), ("c", 3000), ("d", 4000)))
    kept = _entry(tmp_path, "kept", 1000, 9000)
    recent = _entry(tmp_path, "recent", 1000, GRACE_SECONDS / 2)
    assert cache_trim([tmp_path], budget_bytes=3000, keep=[kept]) == [oldest, older]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "kept", "recent"]
    # Touched: now the most recent, so an older one goes before it even past the grace.
    cache_touch(old)
    os.utime(recent, (time.time() - GRACE_SECONDS - 1,) * 2)
    assert cache_trim([tmp_path], budget_bytes=2000, keep=[kept]) == [recent]
    assert old.exists() and kept.exists()


def test_entries_in_use_stay_past_the_budget_and_leftovers_of_killed_writers_go(tmp_path):
    in_use = _entry(tmp_path, "in-use", 5000, 1)
    half_written = _entry(tmp_path, ".in-use-abc123", 5000, LEFTOVER_SECONDS + 60)
    being_written = _entry(tmp_path, ".other-def456", 5000, 5)
    assert cache_trim([tmp_path], budget_bytes=0) == []
    assert in_use.exists() and being_written.exists() and not half_written.exists()


@pytest.mark.django_db
def test_a_worker_evicts_decoded_images_past_its_budget(colour_dataset, settings):
    settings.TRAIN_CACHE_MAX_MB = 0  # every entry but the one in use is past the budget
    job = training_job_start(dataset=colour_dataset, config=TrainConfig.from_dict({"arch": "baseline"}), enqueue=False)
    snapshot_arrays(job.snapshot, 16)
    (first,) = (Path(settings.TRAIN_WORK_DIR) / "arrays").iterdir()
    os.utime(first, (time.time() - GRACE_SECONDS - 1,) * 2)  # not used for a while
    data = snapshot_arrays(job.snapshot, 24)
    training_cache_trim()  # as a job does once its images (and features) are in place
    assert [p.name for p in (Path(settings.TRAIN_WORK_DIR) / "arrays").iterdir()] == [
        first.name.replace("-16px-", "-24px-")
    ]
    assert data.train.x.shape[1:] == (24, 24, 3)
    # Lost, it is made again from storage: the host's copy was only a cache.
    assert snapshot_arrays(job.snapshot, 16).train.x.shape[1:] == (16, 16, 3)


@pytest.mark.django_db
def test_the_model_cache_keeps_the_file_it_just_fetched(trained_version, settings):
    settings.MODEL_CACHE_MAX_MB = 0
    cache = Path(settings.MODEL_CACHE_DIR)
    shutil.rmtree(cache, ignore_errors=True)  # this host has not fetched the version yet
    stale = _entry(cache, "0" * 64 + ".keras.dir", 10_000, GRACE_SECONDS + 60)
    path = local_model_file(trained_version)
    assert path.exists() and not stale.exists()
