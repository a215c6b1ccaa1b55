"""The metadata store contract: every test runs unchanged against SQLite and PostgreSQL.

A second store object on the same data stands for another worker process or node.  PostgreSQL runs in a
schema of the test's own (tests/services.py); SQLite in the test's temporary folder.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable

import pytest

from hsmkms.store.base import (
    AccessKeyRecord,
    AliasRecord,
    AlreadyExists,
    ImportTokenRecord,
    KeyFilter,
    KeyMaterialRecord,
    KeyRecord,
    PendingObject,
    Store,
    TagRecord,
    VersionRecord,
)
from hsmkms.store.postgres import PostgresStore
from hsmkms.store.sqlite import SqliteStore

PROPAGATION_BOUND_S = 1.0


def make_store(kind: str, location: str) -> Store:
    return SqliteStore(location) if kind == "sqlite" else PostgresStore(location)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path) -> tuple[str, str]:
    """Which store, and where its data is: a file of the test's own, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "meta.db")
    return "postgres", request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def open_store(backend) -> Callable[[], Store]:
    """Opens (and migrates) a store object on the test's data; every object opened is closed afterwards."""
    opened: list[Store] = []

    def opener() -> Store:
        store = make_store(*backend)
        store.migrate()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store) -> Store:
    return open_store()


def new_key(store: Store, created_at: int = 1_700_000_000, **changes) -> KeyRecord:
    key_id, version_id = str(uuid.uuid4()), str(uuid.uuid4())
    fields = dict(key_id=key_id, state="Enabled", key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT",
                  origin="Aliyun_KMS", protection_level="HSM", description="a key", creator="1000",
                  created_at=created_at, primary_version_id=version_id, last_rotation_at=created_at)
    record = KeyRecord(**(fields | changes))
    store.create_key(record, VersionRecord(record.primary_version_id, record.key_id, created_at), [])
    return record


def add_version(store: Store, key: KeyRecord, created_at: int) -> VersionRecord:
    version = VersionRecord(str(uuid.uuid4()), key.key_id, created_at)
    assert store.add_version(version, expected_last_rotation=store.get_key(key.key_id).last_rotation_at)
    return version


# --- schema ----------------------------------------------------------------------------------------------


def test_migrate_twice_changes_nothing(store, open_store):
    key = new_key(store)
    store.migrate()
    assert open_store().get_key(key.key_id) == key


def _migrate_in_child(kind: str, location: str) -> None:
    store = make_store(kind, location)
    store.migrate()
    store.close()


def test_several_processes_migrate_at_once(backend):
    """Nodes starting together each migrate a new, empty schema: every one succeeds, and the schema is whole."""
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_migrate_in_child, args=backend) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    store = make_store(*backend)
    try:
        key = new_key(store)
        store.create_access_key(AccessKeyRecord("LTAIx", b"i", b"s", "Enabled", "", 1, "{}"))
        assert store.list_keys(0, 10) == ([key], 1)
    finally:
        store.close()


# --- keys and versions -----------------------------------------------------------------------------------


def test_a_key_reads_back_as_written(store):
    key = new_key(store, description="é ü 中", delete_at=None, deletion_protection=True,
                  deletion_protection_description="keep", rotation_interval=86400 * 30)
    assert store.get_key(key.key_id) == key
    assert store.get_version(key.primary_version_id) == VersionRecord(key.primary_version_id, key.key_id,
                                                                     key.created_at)
    assert store.get_key(str(uuid.uuid4())) is None
    assert store.get_version(str(uuid.uuid4())) is None


def test_a_key_id_is_unique(store):
    key = new_key(store)
    with pytest.raises(AlreadyExists):
        new_key(store, key_id=key.key_id)


def test_the_journal_of_hsm_objects(store):
    key_id = str(uuid.uuid4())
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    store.begin_object(PendingObject(second, key_id, "create", 20))
    store.begin_object(PendingObject(first, key_id, "create", 10))
    assert [p.object_id for p in store.pending_objects()] == [first, second]  # oldest first
    store.finish_object(first)
    assert store.pending_objects() == [PendingObject(second, key_id, "create", 20)]
    # Recording the key removes the journal entry of its version, in the same transaction.
    key = new_key(store, key_id=key_id, primary_version_id=second)
    assert store.pending_objects() == []
    third = str(uuid.uuid4())
    store.begin_object(PendingObject(third, key.key_id, "create", 30))
    assert store.add_version(VersionRecord(third, key.key_id, 30), expected_last_rotation=key.last_rotation_at)
    assert store.pending_objects() == []


def test_a_version_is_added_only_over_the_rotation_it_expected(store):
    key = new_key(store, created_at=100)
    version = VersionRecord(str(uuid.uuid4()), key.key_id, 200)
    assert not store.add_version(version, expected_last_rotation=99)  # someone rotated meanwhile
    assert store.get_version(version.version_id) is None
    assert store.add_version(version, expected_last_rotation=100)
    assert store.get_key(key.key_id).primary_version_id == version.version_id
    assert store.get_key(key.key_id).last_rotation_at == 200
    assert not store.add_version(VersionRecord(str(uuid.uuid4()), key.key_id, 300), expected_last_rotation=100)
    # A key whose rotation never ran (None) is matched by None, not by any number.
    never = new_key(store, last_rotation_at=None)
    assert not store.add_version(VersionRecord(str(uuid.uuid4()), never.key_id, 5), expected_last_rotation=0)
    assert store.add_version(VersionRecord(str(uuid.uuid4()), never.key_id, 5), expected_last_rotation=None)


def test_only_an_enabled_key_gets_a_version(store):
    key = new_key(store, state="Disabled")
    assert not store.add_version(VersionRecord(str(uuid.uuid4()), key.key_id, 5),
                                 expected_last_rotation=key.last_rotation_at)


def test_versions_list_in_creation_order_with_paging(store):
    key = new_key(store, created_at=100)
    added = [add_version(store, key, 100) for _ in range(4)]  # the same second: insertion order decides
    added.append(add_version(store, key, 101))
    page, total = store.list_versions(key.key_id, 0, 3)
    assert total == 6
    assert [v.version_id for v in page] == [key.primary_version_id] + [v.version_id for v in added[:2]]
    page, _ = store.list_versions(key.key_id, 3, 10)
    assert [v.version_id for v in page] == [v.version_id for v in added[2:]]
    assert store.list_versions(str(uuid.uuid4()), 0, 10) == ([], 0)


def test_update_key_applies_only_from_the_expected_state(store):
    key = new_key(store)
    assert store.update_key(key.key_id, {"state": "Disabled"}, expected_state="Enabled")
    assert not store.update_key(key.key_id, {"state": "Enabled", "description": "x"}, expected_state="Enabled")
    assert store.get_key(key.key_id).description == key.description
    assert store.update_key(key.key_id, {"state": "PendingDeletion", "delete_at": 500, "deletion_protection": True,
                                         "description": "gone soon"}, expected_state="Disabled")
    updated = store.get_key(key.key_id)
    assert (updated.state, updated.delete_at, updated.deletion_protection, updated.description) == \
        ("PendingDeletion", 500, True, "gone soon")
    assert store.update_key(key.key_id, {"state": "Enabled", "delete_at": None}, expected_state="PendingDeletion")
    assert store.get_key(key.key_id).delete_at is None
    with pytest.raises(ValueError):
        store.update_key(key.key_id, {"destroyed_at": 1}, expected_state="Enabled")
    with pytest.raises(ValueError):
        store.update_key(key.key_id, {"no_such_field": 1}, expected_state="Enabled")


def test_destroying_a_due_key(store):
    key = new_key(store)
    second = add_version(store, key, key.created_at + 1)
    store.create_alias(AliasRecord("alias/doomed", key.key_id, 1))
    store.set_tags([TagRecord(key.key_id, "team", "a")])
    keeper = new_key(store)
    store.create_alias(AliasRecord("alias/kept", keeper.key_id, 1))
    store.set_tags([TagRecord(keeper.key_id, "team", "b")])

    assert store.destroy_key(key.key_id, now=1000) == []  # not pending deletion
    store.update_key(key.key_id, {"state": "PendingDeletion", "delete_at": 2000}, expected_state="Enabled")
    assert store.keys_due_for_deletion(1999) == []
    assert store.destroy_key(key.key_id, now=1999) == []  # not due yet
    assert store.keys_due_for_deletion(2000) == [key.key_id]
    destroyed = store.destroy_key(key.key_id, now=2000)
    assert sorted(destroyed) == sorted([key.primary_version_id, second.version_id])
    assert store.destroy_key(key.key_id, now=2001) == []  # once only
    assert {(p.object_id, p.purpose) for p in store.pending_objects()} == {(v, "destroy") for v in destroyed}
    assert store.get_key(key.key_id) is None
    assert store.get_version(second.version_id) is None
    assert store.get_alias("alias/doomed") is None and store.get_alias("alias/kept") is not None
    assert store.list_tags() == [TagRecord(keeper.key_id, "team", "b")]
    assert store.keys_due_for_deletion(5000) == []
    assert store.list_keys(0, 10)[1] == 1
    assert store.all_versions() == {key.primary_version_id: False, second.version_id: False,
                                    keeper.primary_version_id: True}
    assert not store.update_key(key.key_id, {"description": "x"}, expected_state="PendingDeletion")


def test_destroying_a_key_whose_version_is_already_journalled(store):
    key = new_key(store)
    store.begin_object(PendingObject(key.primary_version_id, key.key_id, "create", 1))
    store.update_key(key.key_id, {"state": "PendingDeletion", "delete_at": 10}, expected_state="Enabled")
    assert store.destroy_key(key.key_id, now=10) == [key.primary_version_id]
    assert store.pending_objects() == [PendingObject(key.primary_version_id, key.key_id, "destroy", 10)]


def test_keys_due_for_rotation(store):
    due = new_key(store, created_at=1000, rotation_interval=100)
    new_key(store, created_at=1000, rotation_interval=500)
    new_key(store, created_at=1000)  # no automatic rotation
    new_key(store, created_at=1000, rotation_interval=100, state="Disabled")
    assert store.keys_due_for_rotation(1099) == []
    assert [k.key_id for k in store.keys_due_for_rotation(1100)] == [due.key_id]


def test_list_keys_orders_pages_and_counts(store):
    keys = [new_key(store, created_at=t) for t in (30, 10, 20, 20)]
    expected = sorted(keys, key=lambda k: (k.created_at, k.key_id))
    page, total = store.list_keys(0, 3)
    assert total == 4 and page == expected[:3]
    assert store.list_keys(3, 3) == (expected[3:], 4)
    assert store.list_keys(10, 3) == ([], 4)


def test_list_keys_filters(store):
    a = new_key(store, created_at=1, protection_level="SOFTWARE")
    b = new_key(store, created_at=2, state="Disabled")
    c = new_key(store, created_at=3, key_spec="Aliyun_AES_128", creator="other")
    store.create_alias(AliasRecord("alias/a", a.key_id, 1))
    store.set_tags([TagRecord(b.key_id, "env", "prod"), TagRecord(c.key_id, "env", "test"),
                    TagRecord(c.key_id, "owner", "prod")])

    def ids(**where) -> list[str]:
        page, total = store.list_keys(0, 10, KeyFilter(**where))
        assert total == len(page)
        return [k.key_id for k in page]

    assert ids() == [a.key_id, b.key_id, c.key_id]
    assert ids(states=frozenset({"Disabled"})) == [b.key_id]
    assert ids(states=frozenset({"Disabled", "Enabled"})) == [a.key_id, b.key_id, c.key_id]
    assert ids(key_specs=frozenset({"Aliyun_AES_128"})) == [c.key_id]
    assert ids(protection_levels=frozenset({"SOFTWARE"})) == [a.key_id]
    assert ids(creators=frozenset({"other"})) == [c.key_id]
    assert ids(key_usages=frozenset({"SIGN/VERIFY"})) == []
    assert ids(key_ids=frozenset({a.key_id, c.key_id})) == [a.key_id, c.key_id]
    assert ids(alias_names=frozenset({"alias/a", "alias/none"})) == [a.key_id]
    assert ids(tag_keys=frozenset({"env"})) == [b.key_id, c.key_id]
    assert ids(tag_values=frozenset({"prod"})) == [b.key_id, c.key_id]
    assert ids(tag_keys=frozenset({"env"}), tag_values=frozenset({"prod"}), states=frozenset({"Enabled"})) == \
        [c.key_id]  # fields are AND-ed, each over any of the key's tags
    assert ids(match_nothing=True) == []


def test_warming_reads_the_newest_keys_and_versions(store):
    old, new = new_key(store, created_at=1), new_key(store, created_at=2)
    version = add_version(store, new, 3)
    keys, versions = store.live_keys_and_versions(limit=1)
    assert keys == [store.get_key(new.key_id)]
    assert versions == [version]
    keys, versions = store.live_keys_and_versions(limit=10)
    assert {k.key_id for k in keys} == {old.key_id, new.key_id} and len(versions) == 3


def test_records_share_one_copy_of_each_name_and_id(open_store):
    """The few names every record repeats (state, spec, usage, origin, protection level) and the ids: records
    read back share one copy of each, and a version's key id is its key's own (what the workers' caches rely
    on to find them in cache)."""
    store = open_store()
    first, second = new_key(store), new_key(store)
    reader = open_store()  # another worker: its records are read, not the ones written
    keys, versions = reader.live_keys_and_versions(10)
    records = [reader.get_key(first.key_id), reader.get_key(second.key_id), *keys]
    for name in ("state", "key_spec", "key_usage", "origin", "protection_level"):
        assert len({id(getattr(record, name)) for record in records}) == 1, name
        assert getattr(records[0], name) == getattr(first, name)
    by_id = {key.key_id: key for key in keys}
    for version in [*versions, reader.get_version(first.primary_version_id),
                    *reader.list_versions(first.key_id, 0, 10)[0]]:
        key = by_id[version.key_id]
        assert version.key_id is key.key_id
        assert version.version_id is key.primary_version_id
    assert reader.get_key(first.key_id).key_id is by_id[first.key_id].key_id


# --- tags ------------------------------------------------------------------------------------------------


def test_tags_are_set_replaced_and_removed(store):
    a, b = new_key(store), new_key(store)
    store.set_tags([TagRecord(a.key_id, "z", "1"), TagRecord(a.key_id, "a", "2"), TagRecord(b.key_id, "m", "3")])
    store.set_tags([TagRecord(a.key_id, "z", "replaced")])
    first, second = sorted([a.key_id, b.key_id])
    assert [(t.key_id, t.tag_key) for t in store.list_tags()] == sorted(
        [(a.key_id, "a"), (a.key_id, "z"), (b.key_id, "m")])
    assert store.list_tags([a.key_id]) == [TagRecord(a.key_id, "a", "2"), TagRecord(a.key_id, "z", "replaced")]
    assert store.list_tags([]) == []
    store.remove_tags(a.key_id, ["z", "not-there"])
    assert store.list_tags([a.key_id]) == [TagRecord(a.key_id, "a", "2")]
    store.remove_tags(a.key_id, None)
    assert store.list_tags([first, second]) == [TagRecord(b.key_id, "m", "3")]


def test_tag_keys_sort_bytewise(store):
    key = new_key(store)
    store.set_tags([TagRecord(key.key_id, name, "v") for name in ("b", "B", "a", "_", "A")])
    assert [t.tag_key for t in store.list_tags([key.key_id])] == ["A", "B", "_", "a", "b"]


# --- aliases ---------------------------------------------------------------------------------------------


def test_aliases(store):
    a, b = new_key(store), new_key(store)
    store.create_alias(AliasRecord("alias/b", a.key_id, 5))
    store.create_alias(AliasRecord("alias/a", a.key_id, 6))
    store.create_alias(AliasRecord("alias/C", b.key_id, 7))
    with pytest.raises(AlreadyExists):
        store.create_alias(AliasRecord("alias/a", b.key_id, 8))
    assert store.get_alias("alias/a") == AliasRecord("alias/a", a.key_id, 6)
    assert store.get_alias("alias/A") is None  # names are case-sensitive
    assert store.list_aliases(0, 2) == ([AliasRecord("alias/C", b.key_id, 7), AliasRecord("alias/a", a.key_id, 6)], 3)
    assert store.list_aliases(2, 2) == ([AliasRecord("alias/b", a.key_id, 5)], 3)
    assert store.list_aliases(0, 10, key_id=b.key_id) == ([AliasRecord("alias/C", b.key_id, 7)], 1)
    assert store.update_alias("alias/a", b.key_id, expected_key_id=a.key_id)
    assert not store.update_alias("alias/none", b.key_id, expected_key_id=a.key_id)
    # Moved only while it still points where the caller was authorized to see it point.
    assert not store.update_alias("alias/a", a.key_id, expected_key_id=a.key_id)
    assert store.get_alias("alias/a").key_id == b.key_id
    assert not store.delete_alias("alias/a", expected_key_id=a.key_id)
    assert store.delete_alias("alias/a", expected_key_id=b.key_id)
    assert not store.delete_alias("alias/a", expected_key_id=b.key_id)
    assert store.list_aliases(0, 10, key_id=b.key_id)[1] == 1


# --- access keys -----------------------------------------------------------------------------------------


def test_access_keys(store):
    first = AccessKeyRecord("LTAIfirst", bytes(range(12)), b"\x00sealed\xff" * 4, "Enabled", "app", 10, None)
    second = AccessKeyRecord("LTAIsecond", b"\x01" * 12, b"s", "Enabled", "", 5, '{"Version":"1"}')
    store.create_access_key(first)
    store.create_access_key(second)
    with pytest.raises(AlreadyExists):
        store.create_access_key(first)
    assert store.get_access_key("LTAIfirst") == first
    assert store.get_access_key("LTAInone") is None
    assert store.list_access_keys() == [second, first]  # by creation
    assert store.set_access_key_state("LTAIfirst", "Disabled")
    assert not store.set_access_key_state("LTAInone", "Disabled")
    assert store.set_access_key_policy("LTAIfirst", '{"Statement":[]}')
    assert not store.set_access_key_policy("LTAInone", "{}")
    changed = store.get_access_key("LTAIfirst")
    assert (changed.state, changed.policy) == ("Disabled", '{"Statement":[]}')
    assert store.delete_access_key("LTAIsecond")
    assert not store.delete_access_key("LTAIsecond")
    assert store.list_access_keys() == [changed]


# --- what other processes see ----------------------------------------------------------------------------


def wait_for_change(read: Callable[[], object], before: object) -> float:
    """Seconds until ``read()`` differs from ``before`` (fails after PROPAGATION_BOUND_S)."""
    started = time.monotonic()
    while read() == before:
        assert time.monotonic() - started < PROPAGATION_BOUND_S, "no change seen within the bound"
        time.sleep(0.005)
    return time.monotonic() - started


def test_another_process_sees_every_commit(store, open_store):
    other = open_store()
    other.change_counter()
    time.sleep(0.3)  # a store may need a moment to start listening
    key = new_key(store)
    store.create_access_key(AccessKeyRecord("LTAIx", b"i", b"s", "Enabled", "", 1, "{}"))
    for write in (lambda: store.update_key(key.key_id, {"description": "x"}, "Enabled"),
                  lambda: store.create_alias(AliasRecord("alias/seen", key.key_id, 1)),
                  lambda: store.set_access_key_state("LTAIx", "Disabled")):
        counter, version = other.change_counter(), other.data_version()
        write()
        wait_for_change(other.change_counter, counter)
        wait_for_change(other.data_version, version)
    assert other.get_alias("alias/seen").key_id == key.key_id


def test_reads_do_not_count_as_changes(store, open_store):
    other = open_store()
    other.change_counter()
    key = new_key(store)
    time.sleep(0.3)
    counter, version = other.change_counter(), other.data_version()
    store.get_key(key.key_id)
    store.list_keys(0, 10)
    store.pending_objects()
    time.sleep(0.2)
    assert (other.change_counter(), other.data_version()) == (counter, version)


def test_the_store_answers_a_ping(store):
    assert store.ping()


# --- key-material import ------------------------------------------------------------------------------


def test_import_tokens_are_recorded_and_expire(store):
    key = new_key(store, state="PendingImport", origin="EXTERNAL")
    wrapping_id = str(uuid.uuid4())
    store.begin_object(PendingObject(wrapping_id, key.key_id, "create", 100))
    token = ImportTokenRecord("tok-" + uuid.uuid4().hex, key.key_id, wrapping_id, "RSAES_OAEP_SHA_1", 100, 200)
    store.add_import_token(token)
    assert store.pending_objects() == []  # the wrapping key's journal entry ends with the record
    assert store.get_import_token(token.token_id) == token
    assert store.get_import_token("tok-other") is None
    assert store.expired_import_tokens(199) == []
    assert store.expired_import_tokens(200) == [token]
    store.delete_import_token(token.token_id)
    assert store.get_import_token(token.token_id) is None


def test_key_material_moves_the_key_between_pending_import_and_enabled(open_store):
    store, other = open_store(), open_store()
    key = new_key(store, state="PendingImport", origin="EXTERNAL")
    assert store.versions_without_material() == {key.primary_version_id}
    assert store.get_key_material(key.key_id) is None
    store.begin_object(PendingObject(key.primary_version_id, key.key_id, "create", 100))
    material = KeyMaterialRecord(key.key_id, b"\x00check\xff", True, 500, 100)
    assert not store.record_key_material(material, key.primary_version_id, expected_state="Enabled")
    assert store.record_key_material(material, key.primary_version_id, expected_state="PendingImport")
    assert store.pending_objects() == []
    assert other.get_key(key.key_id).state == "Enabled"
    assert other.get_key_material(key.key_id) == material
    assert store.versions_without_material() == set()
    assert store.expired_materials(499) == []
    assert store.expired_materials(500) == [key.key_id]

    destroy = PendingObject(key.primary_version_id, key.key_id, "destroy", 400)
    assert not store.clear_key_material(key.key_id, expected_state="Disabled", destroy=destroy)
    assert store.pending_objects() == []
    assert store.clear_key_material(key.key_id, expected_state="Enabled", destroy=destroy)
    assert store.pending_objects() == [destroy]  # journalled with the change: recovery finishes it
    store.finish_object(destroy.object_id)
    assert store.get_key(key.key_id).state == "PendingImport"
    cleared = store.get_key_material(key.key_id)
    assert (cleared.check_value, cleared.present, cleared.expires_at) == (material.check_value, False, None)
    assert store.expired_materials(10**9) == []
    assert store.versions_without_material() == {key.primary_version_id}

    # Re-imported: the record is replaced; a key pending deletion keeps its state when the material goes.
    assert store.record_key_material(KeyMaterialRecord(key.key_id, material.check_value, True, None, 300),
                                     key.primary_version_id, expected_state="PendingImport")
    assert store.update_key(key.key_id, {"state": "PendingDeletion", "delete_at": 10**9}, expected_state="Enabled")
    assert store.clear_key_material(key.key_id, expected_state="PendingDeletion", destroy=destroy)
    assert store.get_key(key.key_id).state == "PendingDeletion"
