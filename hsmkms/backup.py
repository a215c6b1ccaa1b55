"""Backups: the metadata database and, for a SoftHSM token that hsmkms manages, the token directory.

A deployment is the metadata store plus the token; keys never leave the HSM, so a backup of a real HSM is
made with the vendor's tools (Luna/nShield/Utimaco backup or cloning, a CloudHSM backup), on the same
schedule as ``hsmkms backup``.

Online: the database copy is one consistent SQLite snapshot taken while the server runs, and the SoftHSM
token directory is copied right after it.  A key created between the two is in the token copy but not in
the database copy: an orphan object that ``hsmkms doctor --repair`` removes after a restore.  (Objects are
destroyed only when a key's deletion window has passed, so the token copy lacks an object the database copy
names only for a key that was being purged at that moment, and was due to go anyway.)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hsmkms.settings import Settings
from hsmkms.store.sqlite import SqliteStore

DATABASE = "hsmkms.db"
TOKENS = "softhsm-tokens"
MANIFEST = "MANIFEST.json"
FORMAT = 1


class BackupError(Exception):
    """A backup or restore cannot proceed; the message says why."""


@dataclass(frozen=True)
class BackupResult:
    directory: Path
    token_copied: bool

    def advice(self, settings: Settings) -> str:
        if self.token_copied:
            return f"backed up the metadata database and the SoftHSM token directory to {self.directory}"
        return (f"backed up the metadata database to {self.directory}. Back up the token {settings.token_label!r} "
                "with your HSM vendor's backup or cloning tools too: the keys are only there.")


POSTGRES_ADVICE = ("the metadata is in PostgreSQL ([store] url): back it up with PostgreSQL's own tools (pg_dump, "
                   "or base backups with WAL archiving), and the token with the HSM vendor's tools")


def backup(settings: Settings, destination: Path) -> BackupResult:
    if settings.uses_postgres:
        raise BackupError(POSTGRES_ADVICE)
    if destination.exists() and any(destination.iterdir()):
        raise BackupError(f"{destination} is not empty")
    destination.mkdir(parents=True, exist_ok=True)
    os.chmod(destination, 0o700)
    store = SqliteStore(settings.database_path)
    try:
        store.backup(destination / DATABASE)
    finally:
        store.close()
    token_copied = settings.softhsm_token_dir is not None
    if token_copied:
        shutil.copytree(settings.softhsm_token_dir, destination / TOKENS, ignore=shutil.ignore_patterns("*.lock"))
    manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "token_label": settings.token_label, "softhsm_token": token_copied}
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return BackupResult(destination, token_copied)


def restore(settings: Settings, source: Path, force: bool = False) -> list[str]:
    """Put a backup back in place; the server must be stopped.  Returns what was restored."""
    if settings.uses_postgres:
        raise BackupError(POSTGRES_ADVICE)
    try:
        manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise BackupError(f"{source} is not an hsmkms backup (no readable {MANIFEST})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unsupported backup format {manifest.get('format')!r}")
    if manifest["token_label"] != settings.token_label:
        raise BackupError(f"the backup is of token {manifest['token_label']!r}, not {settings.token_label!r}")
    database = settings.database_path
    if database.exists() and not force:
        raise BackupError(f"{database} exists; stop the server and pass --force to replace it")
    restored = []
    database.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    settings.nonces_path.unlink(missing_ok=True)  # nonces seen before the restore: disposable
    shutil.copy2(source / DATABASE, database)
    os.chmod(database, 0o600)
    restored.append(f"metadata database -> {database}")
    if manifest["softhsm_token"]:
        if settings.softhsm_token_dir is None:
            raise BackupError("the backup holds a SoftHSM token but this configuration has no [hsm.softhsm]")
        if settings.softhsm_token_dir.exists():
            shutil.rmtree(settings.softhsm_token_dir)
        shutil.copytree(source / TOKENS, settings.softhsm_token_dir)
        os.chmod(settings.softhsm_token_dir, 0o700)
        restored.append(f"SoftHSM token directory -> {settings.softhsm_token_dir}")
    else:
        restored.append(f"restore the token {settings.token_label!r} with your HSM vendor's tools")
    return restored
