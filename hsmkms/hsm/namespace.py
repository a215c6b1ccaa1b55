"""Which token objects belong to this deployment, so that several deployments can share one token or HSM
partition (staging and production, two clusters).  Pure: nothing here touches PKCS#11.

The service layer names objects by an id (a key version id, or the service key's name) and a label that starts
``hsmkms:``.  On the token:

- the default deployment (``[hsm] deployment`` empty) stores them as hsmkms always has: CKA_ID = the id, and
  the label as given (``hsmkms:cmk:<key-id>:<version-id>``).  Tokens made before deployments had names keep
  every key: their objects are the default deployment's.
- a named deployment ``prod`` stores CKA_ID = ``prod/<id>`` and the label ``hsmkms@prod:cmk:<key-id>:<version-id>``.

An object is this deployment's when both its label and its CKA_ID say so; any other object whose label starts
``hsmkms:`` or ``hsmkms@`` is another deployment's (foreign): listed by doctor, never used or destroyed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LABEL_PREFIX = "hsmkms:"
DEPLOYMENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")


@dataclass(frozen=True)
class Namespace:
    deployment: str = ""

    def __post_init__(self):
        if self.deployment and not DEPLOYMENT_NAME.match(self.deployment):
            raise ValueError("a deployment name is 1-32 lowercase letters, digits, '-' or '_', starting with a "
                             f"letter or digit, not {self.deployment!r}")

    @property
    def label_prefix(self) -> str:
        return f"hsmkms@{self.deployment}:" if self.deployment else LABEL_PREFIX

    @property
    def id_prefix(self) -> str:
        return f"{self.deployment}/" if self.deployment else ""

    def cka_id(self, object_id: str) -> bytes:
        return (self.id_prefix + object_id).encode("ascii")

    def cka_label(self, label: str) -> str:
        """The token label of the object the service calls ``label`` (which starts ``hsmkms:``)."""
        if not label.startswith(LABEL_PREFIX):
            raise ValueError(f"labels of hsmkms objects start with {LABEL_PREFIX!r}")
        return self.label_prefix + label[len(LABEL_PREFIX):]

    def owned(self, cka_label: str, cka_id: bytes) -> tuple[str, str] | None:
        """(object id, the label as the service knows it) when the object is this deployment's, else None."""
        try:
            text_id = cka_id.decode("ascii")
        except UnicodeDecodeError:
            return None
        if not (cka_label.startswith(self.label_prefix) and text_id.startswith(self.id_prefix)):
            return None
        object_id = text_id[len(self.id_prefix):]
        if not object_id or "/" in object_id:
            return None  # the default deployment's ids have no deployment part
        return object_id, LABEL_PREFIX + cka_label[len(self.label_prefix):]

    @staticmethod
    def is_hsmkms(cka_label: str) -> bool:
        return cka_label.startswith(LABEL_PREFIX) or cka_label.startswith("hsmkms@")
