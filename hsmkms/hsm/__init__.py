"""The HSM boundary: ``backend`` declares the interface, ``pkcs11`` implements it over a PKCS#11 module."""
