"""Which token objects belong to which deployment (hsmkms/hsm/namespace.py)."""

from __future__ import annotations

import pytest

from hsmkms.hsm.namespace import Namespace

VERSION = "0b4bd9bc-6c3e-4d2f-9a4e-1c1b2b1a7e10"
LABEL = f"hsmkms:cmk:5f1c0000-0000-4000-8000-000000000000:{VERSION}"


def test_the_default_deployment_stores_objects_as_hsmkms_always_has():
    default = Namespace()
    assert default.cka_id(VERSION) == VERSION.encode()
    assert default.cka_label(LABEL) == LABEL
    assert default.owned(LABEL, VERSION.encode()) == (VERSION, LABEL)
    service = "hsmkms-service-access-key-secrets"
    assert default.owned("hsmkms:service:access-key-secrets", service.encode()) == \
        (service, "hsmkms:service:access-key-secrets")


def test_a_named_deployment_names_itself_in_label_and_id():
    prod = Namespace("prod")
    assert prod.cka_id(VERSION) == f"prod/{VERSION}".encode()
    stored = prod.cka_label(LABEL)
    assert stored == "hsmkms@prod:" + LABEL.removeprefix("hsmkms:")
    assert prod.owned(stored, prod.cka_id(VERSION)) == (VERSION, LABEL)


@pytest.mark.parametrize("mine, other", [("", "prod"), ("prod", ""), ("prod", "staging"), ("prod", "prod-2")])
def test_no_deployment_owns_another_ones_objects(mine, other):
    theirs = Namespace(other)
    label, cka_id = theirs.cka_label(LABEL), theirs.cka_id(VERSION)
    assert Namespace(mine).owned(label, cka_id) is None
    assert Namespace.is_hsmkms(label)


def test_label_and_id_must_both_say_so():
    prod = Namespace("prod")
    assert prod.owned(prod.cka_label(LABEL), VERSION.encode()) is None
    assert prod.owned(LABEL, prod.cka_id(VERSION)) is None
    assert Namespace().owned(LABEL, b"prod/" + VERSION.encode()) is None
    assert Namespace().owned(LABEL, b"\xff\xfe") is None
    assert not Namespace.is_hsmkms("someone-else:key")


@pytest.mark.parametrize("name", ["Prod", "a b", "-x", "x" * 33, "a/b", "a:b", "a@b"])
def test_deployment_names_are_plain(name):
    with pytest.raises(ValueError):
        Namespace(name)
