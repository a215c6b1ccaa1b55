"""The key service: what a KMS does, independent of HTTP (keys, aliases, data keys, access keys)."""
