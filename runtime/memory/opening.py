"""Opening a memory.db: refuse what is not an rlivs memory before anything is written, create a new one, migrate
an older one in place (schema.py's steps in one transaction, then VACUUM). A mixin of Memory (store.py)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3

from rlivs.runtime.errors import UserError

from . import schema
from .records import SQLITE_HEADER, model_mismatch, same_model

log = logging.getLogger("rlivs.memory")
_V1_TABLES = ("meta", "streams", "clips", "fifo")


class Opening:
    """Memory's opening and migration steps (run by Memory.__init__)."""

    def _not_rlivs(self, why: str) -> UserError:
        return UserError(
            f"{self.path} is not an rlivs memory database: {why}; pass a memory.db written by rlivs or a new path"
        )

    def _check_file(self) -> None:
        """Refuse paths SQLite would reject, before opening (so nothing is ever written to them)."""
        p = self.path
        if p.is_dir():
            raise UserError(f"{p} is a directory: pass a file path such as {p / 'memory.db'}")
        if p.exists():
            with open(p, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
            if head and head != SQLITE_HEADER:
                raise self._not_rlivs(f"the file does not start with the SQLite header (starts with {head[:16]!r})")
        elif self.readonly:
            raise UserError(f"no memory database at {p}: run `rlivs ingest` first or check the --db path")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)

    def _setup(self, given: dict | None) -> None:
        db, conn = self._db, self._conn
        try:
            tables = set(db.table_names())
        except sqlite3.DatabaseError as e:
            raise self._not_rlivs(str(e)) from e
        version = None
        if not tables:
            if self.readonly:
                raise self._not_rlivs("it is empty (nothing was ingested into it)")
            fresh = True
        else:
            fresh = False
            version = self._check_schema(tables)
            stored = self.model_fingerprint()
            if stored is not None and given is not None and not same_model(stored, given):
                raise UserError(model_mismatch(self.path, stored, given))
        if self.readonly:
            if version is not None and version < self.SCHEMA_VERSION:
                self._migrate_with_writer()
            conn.execute("PRAGMA query_only=ON")
            return
        # Only now (the file is ours and compatible) change anything.
        if fresh:  # must precede the first table; space freed by forget then goes back with incremental_vacuum
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if version is not None and version < self.SCHEMA_VERSION:
            self._migrate()
        if fresh or (given is not None and self.model_fingerprint() is None):
            self._write(lambda: self._init_schema(given))

    def _check_schema(self, tables: set[str]) -> int:
        if "meta" not in tables:
            raise self._not_rlivs(f"it holds the tables {sorted(tables)} but no rlivs `meta` table")
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = json.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError, TypeError) as e:
            raise self._not_rlivs(f"its `meta` table is unreadable ({e})") from e
        if not isinstance(version, int):
            raise self._not_rlivs("its `meta` table has no schema_version")
        if version > self.SCHEMA_VERSION:
            raise UserError(
                f"{self.path} has memory schema version {version}, newer than this rlivs reads "
                f"({self.SCHEMA_VERSION}): upgrade rlivs or use a new --db"
            )
        needed = {1: _V1_TABLES, 2: schema.TABLES_V2, 3: schema.TABLES_V3}.get(version, schema.TABLES)
        missing = [t for t in needed if t not in tables]
        if missing:
            raise self._not_rlivs(f"the rlivs tables {missing} are missing")
        return version

    def _init_schema(self, given: dict | None) -> None:
        """Create the tables (idempotent) and the meta rows. Runs inside _write's transaction."""
        schema.create(self._conn)
        if given is not None:
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('model_fingerprint', ?)", (json.dumps(given),)
            )

    def _migrate(self) -> None:
        """Migrate an older file in place: one transaction (a kill leaves the old or the new schema), then VACUUM so
        that the file uses incremental auto-vacuum (a kill during VACUUM leaves the migrated file as it was)."""
        old = json.loads(self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        log.info("migrating %s from memory schema version %d to %d", self.path, old, self.SCHEMA_VERSION)

        def body() -> None:
            if old == 1:
                schema.migrate_v1(self._conn, self._migration_pause)
                self._fill_signatures(force=False)  # (packs the clips once signed)
            else:  # version 2 or 3: the gate's tables are added if missing, the packs built
                schema.migrate_v2(self._conn)
                if self._migration_pause is not None:
                    self._migration_pause("packed")
            self._bump_generation()  # a process that read the older file reloads its column cache

        self._write(body, what=f"migrate the memory to schema version {self.SCHEMA_VERSION}",
                    then=" (the file still holds the previous version, intact)")
        if old == 1:
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._conn.execute("VACUUM")
        log.info("migrated %s to memory schema version %d", self.path, self.SCHEMA_VERSION)

    def _migrate_with_writer(self) -> None:
        """A read-only open of an older file: migrate it through a short-lived writer first (refused when the file
        cannot be written, with what to do)."""
        if not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK):
            raise UserError(f"{self.path} has an older memory schema and must be migrated once, which needs write "
                            f"access to it and its folder: run `rlivs memory info --db {self.path}` as a user who "
                            f"can write it")
        type(self)(self.path).close()
