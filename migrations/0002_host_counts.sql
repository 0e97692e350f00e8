-- Schema version 2: registrations per host, for `--max-per-host`.
--
-- Counting a host's registrations at each REGISTER would scan all of them
-- (a million from one loopback benchmark); a counter kept by triggers is one
-- primary-key read. Triggers, not the writer, keep it, so `p2p-admin prune`
-- and the expiry sweep keep it exact too. Only inserts and deletes of
-- registrations change it: a refresh (upsert, heartbeat) fires neither.

CREATE TABLE host_counts (
    host           TEXT PRIMARY KEY,  -- as in peers.host
    registrations  INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO host_counts (host, registrations)
    SELECT p.host, count(*) FROM registrations r JOIN peers p ON p.id = r.peer_id
    GROUP BY p.host;

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
