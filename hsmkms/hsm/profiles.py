"""Token profiles: where PKCS#11 modules differ, the difference has a name, chosen in the configuration
(``[hsm] profile``) and logged at start.  Pure data: nothing here touches PKCS#11.

- ``softhsm``: SoftHSMv2 2.6 with its file object store.  Several processes on one token directory need a
  file lock around object creation and logins, a process can miss objects another made until it initialises
  the library again, and a failed GCM tag check answers CKR_GENERAL_ERROR.  Its CKM_RSA_PKCS_OAEP takes only
  SHA-1 (SHA-256 answers CKR_ARGUMENTS_BAD): OAEP is decoded on the host after a raw RSA operation.
- ``nss``: NSS softoken (libsoftokn3), whose configuration travels in C_Initialize's reserved argument
  (``[hsm] init_reserved``).  It has no CKA_ALLOWED_MECHANISMS; a failed tag check is CKR_ENCRYPTED_DATA_INVALID.
  Outside FIPS mode it wraps a key whose CKA_EXTRACTABLE is false (measured with NSS 3.87: C_WrapKey with
  CKM_AES_KEY_WRAP gave the key's value): like any software token, the PIN and its files give the keys.
- ``generic``: any other module, as PKCS#11 2.40 describes it: no SoftHSM workaround, CKR_GENERAL_ERROR is a
  device fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath


@dataclass(frozen=True)
class TokenProfile:
    name: str
    # A file lock across processes: exclusive to create or destroy an object and to log in, shared to list.
    file_lock: bool
    # A key object not found is looked for once more after a fresh C_Initialize.
    reinitialise_to_find: bool
    # CKR_GENERAL_ERROR from C_Decrypt means the GCM tag did not verify (otherwise: a device fault).
    general_error_is_tag_mismatch: bool
    # Master keys carry CKA_ALLOWED_MECHANISMS = {CKM_AES_GCM}.
    allowed_mechanisms: bool
    # The token refuses C_WrapKey of a key whose CKA_EXTRACTABLE is false (hsmkms hsm check requires it).
    refuses_wrapping: bool = True
    # RSA-OAEP decryption runs as a raw RSA operation in the token (CKM_RSA_X_509) and the OAEP decoding on the
    # host, in constant time (hsmkms/hsm/oaep.py): for tokens that lack OAEP with SHA-256.  The private key
    # stays in the token; the key's CKA_ALLOWED_MECHANISMS then include CKM_RSA_X_509.
    oaep_unpad_on_host: bool = False


SOFTHSM = TokenProfile("softhsm", file_lock=True, reinitialise_to_find=True, general_error_is_tag_mismatch=True,
                       allowed_mechanisms=True, oaep_unpad_on_host=True)
NSS = TokenProfile("nss", file_lock=False, reinitialise_to_find=False, general_error_is_tag_mismatch=False,
                   allowed_mechanisms=False, refuses_wrapping=False)
GENERIC = TokenProfile("generic", file_lock=False, reinitialise_to_find=False, general_error_is_tag_mismatch=False,
                       allowed_mechanisms=True)

PROFILES = {profile.name: profile for profile in (SOFTHSM, NSS, GENERIC)}
_BY_MODULE_FILE = {"libsofthsm2.so": SOFTHSM, "libsoftokn3.so": NSS}


def profile_for(module_path: str, name: str = "") -> TokenProfile:
    """The profile named ``name``; without one, the profile of a module this code knows by its file name,
    else ``generic``."""
    if name:
        return PROFILES[name]
    return _BY_MODULE_FILE.get(PurePath(module_path).name, GENERIC)
