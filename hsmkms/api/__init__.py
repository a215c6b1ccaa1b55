"""The HTTP face of the service: one RPC endpoint speaking the Alibaba Cloud KMS API 2016-01-20.

``rpc`` receives a request and walks it through ``params`` (parsing), ``auth`` (signatures), the
``actions`` registry (one handler per Action) and ``render`` (JSON or XML, errors in the Alibaba shape).
"""
