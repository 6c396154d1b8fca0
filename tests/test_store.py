"""The run store: ids, atomic writes, hashes and references."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from landscape_cli._io import atomic_file, canonical_json, check_hash, file_sha256, short_hash, write_json
from landscape_cli.config import TrainConfig
from landscape_cli.errors import (
    AmbiguousReferenceError,
    IntegrityError,
    RunNotFoundError,
    StoreError,
    UsageError,
)
from landscape_cli.store import Store, store_root
from landscape_cli.store.meta import Damaged, RunMeta


def test_ids_are_canonical() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "x"]}) == '{"a":[1.5,"x"],"b":1}'
    assert short_hash({"a": 1, "b": 2}) == short_hash({"b": 2, "a": 1})
    assert short_hash({"a": 1}) != short_hash({"a": 2})
    import hashlib

    assert short_hash({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()[:12]
    with pytest.raises(ValueError):
        canonical_json({"lr": float("nan")})


def test_store_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert store_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("LANDSCAPE_STORE", str(tmp_path / "env"))
    assert store_root(None) == tmp_path / "env"
    monkeypatch.delenv("LANDSCAPE_STORE")
    assert store_root(None) == Path("runs")


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"new, half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left


def test_full_disk_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.replace", full)
    with pytest.raises(StoreError, match=r"disk full while writing .*f\.json: free some space"):
        write_json(target, {"a": 1})
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_check_hash(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    digest = file_sha256(p)
    check_hash(p, digest, "thing")
    p.write_bytes(b"abd")
    with pytest.raises(IntegrityError, match="thing was modified or damaged"):
        check_hash(p, digest, "thing")
    p.unlink()
    with pytest.raises(IntegrityError, match="thing is missing"):
        check_hash(p, digest, "thing")


def _run_meta(run_id: str, name: str | None = None) -> RunMeta:
    return RunMeta(id=run_id, name=name, config=TrainConfig("mlp", "digits"),
                   model={"name": "mlp", "args": {}, "parameters": 1}, dataset={"name": "digits", "train_size": 10},
                   epochs_requested=0, epochs=[], resume=None, versions={}, created="")


def _fake_run(store: Store, run_id: str, name: str | None = None) -> None:
    store.run_dir(run_id).mkdir(parents=True)
    store.write_run(_run_meta(run_id, name))


def test_metadata_round_trips_and_checks_its_format(tmp_path: Path) -> None:
    st = Store(tmp_path)
    _fake_run(st, "abc111111111", "first")
    meta = st.read_run("abc111111111")
    assert meta.to_json() == json.loads(st.run_file("abc111111111").read_text())
    raw = meta.to_json()
    write_json(st.run_file("abc111111111"), {**raw, "format": 9})
    with pytest.raises(IntegrityError, match=r"format 9.*newer release; upgrade landscape"):
        st.read_run("abc111111111")
    write_json(st.run_file("abc111111111"), {k: v for k, v in raw.items() if k != "epochs"})
    with pytest.raises(IntegrityError, match="has no 'epochs'"):
        st.read_run("abc111111111")
    write_json(st.run_file("abc111111111"), {**raw, "epochs_requested": "3"})
    with pytest.raises(IntegrityError, match="'epochs_requested' is '3'"):
        st.read_run("abc111111111")


def test_references(tmp_path: Path) -> None:
    st = Store(tmp_path)
    _fake_run(st, "abc111111111", "first")
    _fake_run(st, "abc222222222")
    _fake_run(st, "def333333333", "abc2")  # a name wins over an id prefix
    assert st.resolve("first") == "abc111111111"
    assert st.resolve("abc1") == "abc111111111"
    assert st.resolve("abc2") == "def333333333"
    assert st.resolve("def") == "def333333333"
    with pytest.raises(AmbiguousReferenceError, match="matches 2 runs"):
        st.resolve("abc")
    with pytest.raises(RunNotFoundError, match="no run 'zzz'"):
        st.resolve("zzz")
    with pytest.raises(UsageError, match="empty run reference"):
        st.resolve(" ")
    with pytest.raises(UsageError, match="taken by run abc111111111"):
        st.check_name("first", "def333333333")
    st.check_name("first", "abc111111111")  # a run may keep its own name


def test_damaged_run_json_is_reported_not_fatal(tmp_path: Path) -> None:
    st = Store(tmp_path)
    _fake_run(st, "abc111111111")
    (st.run_dir("abc111111111") / "run.json").write_text('{"id": "abc1')
    [run] = st.runs()
    assert isinstance(run, Damaged) and "not valid JSON" in run.error
    with pytest.raises(IntegrityError):
        st.read_run("abc111111111")


def test_unwritable_store(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        Store(f).ensure_writable()
    with pytest.raises(StoreError, match="pass --store with a writable directory"):
        Store(f / "sub").ensure_writable()


def test_write_json_roundtrip(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}


def _independent_run_json(meta: RunMeta) -> str:
    """run.json as the earlier releases encoded it: the whole record tree, deep-copied, in one json.dumps."""
    import copy
    import dataclasses

    out = meta.to_json()
    for d, e in zip(out["epochs"], meta.epochs, strict=True):  # every value from the record itself, not to_json's
        full = copy.deepcopy(dataclasses.asdict(e))
        assert {k: v for k, v in full.items() if k in d and k != "probe"} == {k: v for k, v in d.items()
                                                                               if k != "probe"}
        if e.probe is not None:
            assert d["probe"] == {k: v for k, v in dataclasses.asdict(e.probe).items()
                                  if v is not None or k != "bn_train"}
    return json.dumps(out, indent=2) + "\n"


def test_run_json_is_written_as_one_json_dumps_would_write_it(tmp_path: Path) -> None:
    """run.json is encoded record by record and each record kept while unchanged (a run rewrites run.json at every
    checkpoint): its bytes are those of one json.dumps of the whole, also after records change or are added."""
    from landscape_cli.store.meta import EpochRecord, ProbeRecord

    legacy = sorted(Path(__file__).parent.glob("data/legacy-*/store/*/run.json"))
    assert len(legacy) == 3
    for path in legacy:  # stores of earlier releases: read and written back byte for byte
        text = path.read_text()
        assert RunMeta.from_json(json.loads(text), path).to_text() == text

    def record(i: int) -> EpochRecord:
        probe = ProbeRecord("ab" * 32, "cpu", "float32", [2, 3], 0, [0.5 * i, -1e-30, 3.0, 1e300, 2.0, float(i)],
                            [1.0] * 6 if i % 2 else None)
        return EpochRecord(i // 3, float("nan") if i == 4 else 0.25 * i, None, None, None, 0.1, f"ckpt-{i}.pt",
                           "0" * 64, "1" * 64, step=10 * i, epoch_end=i % 3 == 0, lr=0.05, probe=probe)

    meta = RunMeta.from_json(json.loads(legacy[-1].read_text()), legacy[-1])
    meta.name = 'quotes " and \\ backslash, é, "epochs": [], \n newline'
    meta.model = {**meta.model, "args": {**meta.model["args"], "epochs": []}}  # a key "epochs" elsewhere
    meta.epochs = []
    assert meta.to_text() == _independent_run_json(meta)
    for i in range(12):
        meta.epochs.append(record(i))
        assert meta.to_text() == _independent_run_json(meta)
    meta.epochs[3].epoch_end = False  # records change after they were written (the recorder, the retention policy)
    meta.epochs[5].removed = True
    meta.epochs[6].probe.eval[0] = 42.0  # type: ignore[union-attr]
    assert '"removed": true' in meta.to_text()
    assert meta.to_text() == _independent_run_json(meta)
    Store(tmp_path).run_dir(meta.id).mkdir()
    Store(tmp_path).write_run(meta)
    path = Store(tmp_path).run_file(meta.id)
    assert path.read_text() == _independent_run_json(meta)
    assert Store(tmp_path).read_run(meta.id).to_text() == path.read_text()
