"""A change log folded into the tables in one INSERT ... SELECT (BENCHMARKS.md,
"Issue 15 at stop 23"). Usage:

    python3 set-based-fold.py DB N sorted|seq [SQL ...]

DB: a registry file with 100,000 names and their registrations (the
benchmarks' preload, checkpointed), copied to fold.db in the current
directory; N log rows, each a new source of an existing name, are
written and then folded, timed statement by statement. The SQL
arguments run before the fold (e.g. "DROP TRIGGER host_counts_insert").
"""
import sqlite3, hashlib, random, time, sys, shutil
SRC = sys.argv[1]; N = int(sys.argv[2]); order = sys.argv[3]
shutil.copy(SRC, "fold.db")
db = sqlite3.connect("fold.db", isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
names = [r[0] for r in db.execute("select name from files")]
db.execute("CREATE TABLE xlog (seq INTEGER PRIMARY KEY, ms INTEGER, host TEXT, port INTEGER, name_key BLOB, size INTEGER, sha256 BLOB)")
rnd = random.Random(1)
rows = []
seq = 10**9
for i in range(N):
    n = rnd.choice(names)
    seq += 1
    rows.append((seq, 1764700000000 + i, "127.0.0.1", 20000 + i % 40000, hashlib.sha256(n.encode()).digest(), rnd.randrange(1, 10**9), rnd.randbytes(32)))
db.execute("BEGIN"); db.executemany("INSERT INTO xlog VALUES (?,?,?,?,?,?,?)", rows); db.execute("COMMIT")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
for stmt in sys.argv[4:]: db.execute(stmt)
t0 = time.perf_counter()
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO peers (host, port) SELECT DISTINCT host, port FROM xlog WHERE true ON CONFLICT DO NOTHING")
t1 = time.perf_counter()
ob = "ORDER BY fk.file_id, p.id" if order == "sorted" else "ORDER BY x.seq"
db.execute(f"""INSERT INTO registrations (file_id, peer_id, size, sha256, registered_at, last_seen, seen_seq)
  SELECT fk.file_id, p.id, x.size, x.sha256, x.ms, x.ms, x.seq
  FROM xlog x JOIN file_keys fk ON fk.name_key = x.name_key JOIN peers p ON p.host = x.host AND p.port = x.port
  WHERE true {ob}
  ON CONFLICT (file_id, peer_id) DO UPDATE SET
     registered_at = CASE WHEN sha256 = excluded.sha256 AND size = excluded.size THEN registered_at ELSE excluded.registered_at END,
     size = excluded.size, sha256 = excluded.sha256, last_seen = excluded.last_seen, seen_seq = excluded.seen_seq""")
t2 = time.perf_counter()
db.execute("DELETE FROM xlog")
db.execute("COMMIT")
t3 = time.perf_counter()
print(f"N={N} {order}: peers {1e6*(t1-t0)/N:.2f} us/row, registrations {1e6*(t2-t1)/N:.2f}, delete+commit {1e6*(t3-t2)/N:.2f}, total {1e6*(t3-t0)/N:.2f} us/row ({t3-t0:.3f} s)")
print(db.execute("select count(*) from registrations").fetchone(), db.execute("select count(*) from peers").fetchone())
