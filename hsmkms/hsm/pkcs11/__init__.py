"""PKCS#11: the only package that touches a PKCS#11 module (python-pkcs11, and ``native`` through ctypes)."""

from hsmkms.hsm.pkcs11.backend import (
    CONFIGURATION_ERRORS,
    Pkcs11Backend,
    attribute_mapper,
    initialise_token,
    master_key_template,
    token_exists,
)

__all__ = ["CONFIGURATION_ERRORS", "Pkcs11Backend", "attribute_mapper", "initialise_token", "master_key_template",
           "token_exists"]
