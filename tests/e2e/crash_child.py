"""Run one key operation against a deployment and die (os._exit, no clean-up) at a chosen point.

    python crash_child.py CONFIG create   after-journal | after-hsm | before-commit
    python crash_child.py CONFIG rotate   after-hsm KEY_ID
    python crash_child.py CONFIG purge    after-first-destroy
    python crash_child.py CONFIG objects  (print the hsmkms object ids in the token, one per line)

A SIGKILL at that point would leave the same state: nothing after the point runs.
"""

from __future__ import annotations

import os
import sys

from hsmkms.app import build_runtime
from hsmkms.settings import load

CRASH = 17


def die(*_args, **_kwargs):
    os._exit(CRASH)


def after(function):
    def run(*args, **kwargs):
        function(*args, **kwargs)
        die()

    return run


def main() -> None:
    config, operation = sys.argv[1], sys.argv[2]
    runtime = build_runtime(load(config))
    hsm, store, keys = runtime.hsm, runtime.store, runtime.services.keys
    if operation == "objects":
        print("\n".join(hsm.list_key_ids()))
        return
    point = sys.argv[3]
    if point == "after-journal":
        hsm.create_aes_key = die
    elif point == "after-hsm":
        hsm.create_aes_key = after(hsm.create_aes_key)
    elif point == "before-commit":
        store.create_key = die
        store.add_version = die
    elif point == "after-first-destroy":
        hsm.destroy_key = after(hsm.destroy_key)
    if operation == "create":
        keys.create_key(key_spec="Aliyun_AES_256", key_usage="ENCRYPT/DECRYPT", origin="Aliyun_KMS",
                        protection_level="HSM", description="crash test")
    elif operation == "rotate":
        keys.create_version(keys.resolve(sys.argv[4]))
    elif operation == "purge":
        runtime.services.maintenance.purge_due()
    sys.exit("the operation finished without reaching the crash point")


if __name__ == "__main__":
    main()
