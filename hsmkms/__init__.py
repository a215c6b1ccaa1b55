"""hsmkms: an Alibaba Cloud KMS API (2016-01-20) compatible key management service on a PKCS#11 HSM."""

__version__ = "0.1.0"
