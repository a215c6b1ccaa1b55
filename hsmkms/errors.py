"""Errors that reach clients, named after the Alibaba Cloud KMS error codes they produce.

Every layer above the HSM raises these; the renderer turns one into the documented JSON body
``{RequestId, HostId, Code, Message}`` with the documented HTTP status.  Lower layers (the HSM backend,
the store) have their own small exception types that the service layer translates into these.
"""

from __future__ import annotations


class KmsError(Exception):
    """Base class: ``code`` and ``status`` are the wire contract, ``message`` what the client reads."""

    code = "InternalFailure"
    status = 500
    message = "Internal Failure."

    def __init__(self, message: str | None = None):
        if message is not None:
            self.message = message
        super().__init__(self.message)


# --- request shape -------------------------------------------------------------------------------------


class MissingParameter(KmsError):
    code, status = "MissingParameter", 400

    def __init__(self, name: str):
        super().__init__(f'The parameter "{name}" is needed but not provided.')


class InvalidParameter(KmsError):
    code, status = "InvalidParameter", 400

    def __init__(self, name: str, reason: str = ""):
        text = f'The specified parameter "{name}" is not valid.'
        super().__init__(f"{text} {reason}".rstrip())


class ParseRequestParameterException(KmsError):
    code, status = "ParseRequestParameterException", 400
    message = "Server parse parameters exception. Please check your input params."


class InvalidActionNotFound(KmsError):
    code, status = "InvalidAction.NotFound", 400
    message = "Specified api is not found, please check your url and method."


class InvalidVersion(KmsError):
    code, status = "InvalidVersion", 400
    message = "Specified parameter Version is not valid."


class UnsupportedHTTPMethod(KmsError):
    code, status = "UnsupportedHTTPMethod", 403
    message = "This http method is not supported."


class RequestTooLarge(KmsError):
    """Body or parameters over the configured limits; Alibaba has no dedicated code, so InvalidParameter."""

    code, status = "InvalidParameter", 400

    def __init__(self, what: str, limit: int):
        super().__init__(f"The request {what} exceeds the limit of {limit} bytes.")


class RequestTimeout(KmsError):
    """The request body did not arrive within [server] body_timeout_seconds; Alibaba documents no code for
    it, so the name of the HTTP status."""

    code, status = "RequestTimeout", 408
    message = "The request body did not arrive in time."


# --- authentication ------------------------------------------------------------------------------------


class IncompleteSignature(KmsError):
    code, status = "IncompleteSignature", 400
    message = "The request signature does not conform to Alibaba Cloud standards."


class SignatureDoesNotMatch(KmsError):
    # The legacy Python SDK splits this message on ':' and compares part 1 with its own string to sign,
    # so the message must carry a colon followed by the server's string to sign.
    code, status = "SignatureDoesNotMatch", 400

    def __init__(self, string_to_sign: str):
        super().__init__(
            "Specified signature is not matched with our calculation. "
            f"server string to sign is:{string_to_sign}"
        )


class IllegalTimestamp(KmsError):
    code, status = "IllegalTimestamp", 400
    message = 'The input parameter "Timestamp" that is required for processing this request is not supplied.'


class InvalidTimeStampExpired(KmsError):
    code, status = "InvalidTimeStamp.Expired", 400
    message = "Specified time stamp or date value is expired."


class SignatureNonceUsed(KmsError):
    code, status = "SignatureNonceUsed", 400
    message = "Specified signature nonce was used already."


class InvalidAccessKeyIdNotFound(KmsError):
    code, status = "InvalidAccessKeyId.NotFound", 404
    message = "The AccessKey ID provided does not exist in our records."


class ForbiddenAccessKey(KmsError):
    code, status = "Forbidden.AccessKey", 403
    message = "This AccessKey is not enabled."


class ForbiddenNoPermission(KmsError):
    code, status = "Forbidden.NoPermission", 403

    def __init__(self, resource: str):
        super().__init__(f"This operation for {resource} is forbidden by permission system.")


class StsTokenNotSupported(KmsError):
    # STS credentials cannot be validated here; refusing them loudly beats accepting them silently.
    code, status = "InvalidSecurityToken.NotSupported", 400
    message = "STS security tokens are not supported by this service; sign with an AccessKey pair."


# --- keys and aliases ----------------------------------------------------------------------------------


class KeyNotFound(KmsError):
    code, status = "Forbidden.KeyNotFound", 404
    message = "The specified Key is not found."


class KeyVersionNotFound(KmsError):
    code, status = "Forbidden.KeyVersionNotFound", 404
    message = "The specified Key version is not found."


class AliasNotFound(KmsError):
    code, status = "Forbidden.AliasNotFound", 404
    message = "The specified Alias is not found."


class AliasAlreadyExists(KmsError):
    code, status = "AliasAlreadyExists", 400
    message = "AliasName Already Exists."


class InvalidCiphertext(KmsError):
    """A blob that does not parse, was tampered with, or meets the wrong EncryptionContext.

    One opaque answer for every decryption failure, so that the error says nothing about which check failed.
    """

    code, status = "InvalidParameter", 400
    message = 'The specified parameter "CiphertextBlob" is not valid, or the EncryptionContext does not match.'


class KeyStateRejected(KmsError):
    """``Rejected.<State>`` (409): the key's state forbids the action (the §2.8 matrix)."""

    status = 409

    def __init__(self, state: str):
        self.code = f"Rejected.{state}"
        super().__init__(f"The request was rejected because the key state is {state}.")


class StateModifiedFailed(KmsError):
    code, status = "Rejected.StateModifiedFailed", 409
    message = "Keystate modified failed."


class DeletionProtected(KmsError):
    # Not in Alibaba's tables (which only say such a key "cannot be deleted"): a Forbidden.* code in their style.
    code, status = "Forbidden.DeletionProtection", 403
    message = "The key has deletion protection enabled; disable it before scheduling the deletion."


class UnsupportedOperation(KmsError):
    code, status = "Rejected.UnsupportedOperation", 400
    message = "Unsupported operation."


class LimitExceeded(KmsError):
    code, status = "Rejected.LimitExceeded", 400
    message = "The request was rejected because user create resource limit was exceeded."


# --- server side ---------------------------------------------------------------------------------------


class InternalFailure(KmsError):
    code, status = "InternalFailure", 500
    message = "Internal Failure."


class ServiceUnavailable(KmsError):
    code, status = "ServiceUnavailableTemporary", 503
    message = "Service Unavailable Temporary."


# --- key-material import (BYOK) ------------------------------------------------------------------------


class InvalidKeyMaterial(KmsError):
    code, status = "InvalidKeyMaterial", 400
    message = "The key material is invalid: it does not open with the import token's key, or it is not the " \
              "material imported before."


class InvalidImportToken(KmsError):
    code, status = "InvalidImportToken", 400
    message = "The import token is invalid."


class ExpiredImportToken(KmsError):
    code, status = "ExpiredImportToken", 400
    message = "The import token is expired."


class UnsupportedOrigin(KmsError):
    code, status = "Unsupported.Origin", 400
    message = "This key origin is not valid for this api."
