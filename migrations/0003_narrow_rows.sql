-- Schema version 3: fewer bytes per registration and per commit (issue 15).
--
-- Measured on 300,000 registrations shaped like the benchmark's (one source
-- per name, 10,000 peers): version 2 took 349 bytes per registration, this
-- one 196 (BENCHMARKS.md, "Registry engine: less written per commit").
--
-- - Digests are 32-byte BLOBs instead of 64 hex characters: the name key
--   and each registration's sha256 shrink by half, and so does every page a
--   commit writes for them. Every surface (wire, admin, index) still shows
--   lowercase hex; the store converts.
-- - A name's key is stored once, in `file_keys` (the key -> id lookup of
--   REGISTER and SEARCH), instead of twice (in `files` and in the UNIQUE
--   index on it). `files` keeps id -> name, the external content of the
--   full-text index. The key is SHA-256(name), so code that deletes a name
--   computes the key from the name; see writes::delete_file_key.
-- - The full-text index keeps no per-name column sizes (`columnsize=0`):
--   they only serve ranking (bm25), which FIND does not use; one B-tree
--   fewer written per new name.
--
-- The rows are copied as they are (unhex of the stored hex); a value that
-- is not 64 hex digits fails the CHECKs and the whole migration with them,
-- leaving the file at version 2.

DROP TRIGGER files_fts_insert;
DROP TRIGGER files_fts_delete;
DROP TRIGGER host_counts_insert;
DROP TRIGGER host_counts_delete;

CREATE TABLE files_v3 (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL
);

CREATE TABLE file_keys (
    name_key  BLOB PRIMARY KEY CHECK (typeof(name_key) = 'blob' AND length(name_key) = 32),  -- SHA-256(name)
    file_id   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE registrations_v3 (
    file_id        INTEGER NOT NULL,
    peer_id        INTEGER NOT NULL,
    size           INTEGER NOT NULL CHECK (size >= 0),
    sha256         BLOB NOT NULL CHECK (typeof(sha256) = 'blob' AND length(sha256) = 32),
    registered_at  INTEGER NOT NULL,  -- unix milliseconds
    last_seen      INTEGER NOT NULL,  -- unix milliseconds: registration or heartbeat
    seen_seq       INTEGER NOT NULL,  -- order of writes, as in version 1
    PRIMARY KEY (file_id, peer_id)
) WITHOUT ROWID;

INSERT INTO files_v3 (id, name) SELECT id, name FROM files;
INSERT INTO file_keys (name_key, file_id) SELECT unhex(name_key), id FROM files;
INSERT INTO registrations_v3
    SELECT file_id, peer_id, size, unhex(sha256), registered_at, last_seen, seen_seq
    FROM registrations;

DROP TABLE files_fts;
DROP TABLE registrations;  -- and its indexes
DROP TABLE files;
ALTER TABLE files_v3 RENAME TO files;
ALTER TABLE registrations_v3 RENAME TO registrations;

-- As in version 1: HEARTBEAT and prune by peer; the expiry sweep and prune --stale.
CREATE INDEX registrations_by_peer ON registrations (peer_id);
CREATE INDEX registrations_by_seen ON registrations (last_seen);

CREATE VIRTUAL TABLE files_fts USING fts5 (
    name,
    content = 'files',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 0',
    columnsize = 0
);
INSERT INTO files_fts (files_fts) VALUES ('rebuild');

-- Fired only when a name is new or gone: a REGISTER of a known name does
-- not touch the full-text index.
CREATE TRIGGER files_fts_insert AFTER INSERT ON files BEGIN
    INSERT INTO files_fts (rowid, name) VALUES (new.id, new.name);
END;

CREATE TRIGGER files_fts_delete AFTER DELETE ON files BEGIN
    INSERT INTO files_fts (files_fts, rowid, name) VALUES ('delete', old.id, old.name);
END;

-- host_counts (version 2) is unchanged and its counts stay exact: the same
-- registrations were copied. Its triggers, as in version 2.
CREATE TRIGGER host_counts_insert AFTER INSERT ON registrations BEGIN
    INSERT INTO host_counts (host, registrations)
        SELECT host, 1 FROM peers WHERE id = new.peer_id
        ON CONFLICT (host) DO UPDATE SET registrations = registrations + 1;
END;

CREATE TRIGGER host_counts_delete AFTER DELETE ON registrations BEGIN
    UPDATE host_counts SET registrations = registrations - 1
        WHERE host = (SELECT host FROM peers WHERE id = old.peer_id);
    DELETE FROM host_counts WHERE registrations <= 0
        AND host = (SELECT host FROM peers WHERE id = old.peer_id);
END;
