-- Schema version 1 of the registry.
--
-- A file is a name (keyed by the SHA-256 of its UTF-8 bytes, as the
-- protocol says); a peer is an address the registry saw; a registration
-- says that a peer serves a file with a given size and content hash.
-- Splitting the three keeps both "one name, thousands of peers" and
-- "one peer, thousands of names" to index lookups.

CREATE TABLE files (
    id        INTEGER PRIMARY KEY,
    name_key  TEXT NOT NULL UNIQUE,   -- lowercase hex SHA-256 of the name
    name      TEXT NOT NULL
);

CREATE TABLE peers (
    id    INTEGER PRIMARY KEY,
    host  TEXT NOT NULL,              -- as written on the wire: 1.2.3.4 or [::1]
    port  INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    UNIQUE (host, port)
);

CREATE TABLE registrations (
    file_id        INTEGER NOT NULL REFERENCES files (id),
    peer_id        INTEGER NOT NULL REFERENCES peers (id),
    size           INTEGER NOT NULL CHECK (size >= 0),
    sha256         TEXT NOT NULL,
    registered_at  INTEGER NOT NULL,  -- unix milliseconds
    last_seen      INTEGER NOT NULL,  -- unix milliseconds: registration or heartbeat
    -- Order of the last registration or heartbeat, strictly increasing across
    -- writes: two writes in one millisecond (one group commit) still order.
    seen_seq       INTEGER NOT NULL,
    PRIMARY KEY (file_id, peer_id)
) WITHOUT ROWID;

-- SEARCH reads the sources of one file off the primary key (file_id first)
-- and sorts them by seen_seq: a name has few sources, and an index on
-- (file_id, seen_seq) would cost every REGISTER and HEARTBEAT one more
-- random B-tree page write (see BENCHMARKS.md).
-- HEARTBEAT, UNREGISTER of a departing peer, `p2p-admin prune --peer`.
CREATE INDEX registrations_by_peer ON registrations (peer_id);
-- The expiry sweep and `prune --stale`.
CREATE INDEX registrations_by_seen ON registrations (last_seen);

-- FIND: word-prefix search over names. An external-content FTS5 table kept
-- in step with `files` by triggers. Diacritics are kept, so "cafe" does not
-- match "café": a word must match a word of the name, case aside.
CREATE VIRTUAL TABLE files_fts USING fts5 (
    name,
    content = 'files',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 0'
);

CREATE TRIGGER files_fts_insert AFTER INSERT ON files BEGIN
    INSERT INTO files_fts (rowid, name) VALUES (new.id, new.name);
END;

CREATE TRIGGER files_fts_delete AFTER DELETE ON files BEGIN
    INSERT INTO files_fts (files_fts, rowid, name) VALUES ('delete', old.id, old.name);
END;
