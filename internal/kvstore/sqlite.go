package kvstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	_ "modernc.org/sqlite" // the pure-Go SQLite driver: no cgo, one binary
)

// SQLite is the embedded backend: one database file in a directory, in WAL
// mode so that every worker process reads while one writes, with commits
// that survive the kill of any process (synchronous=NORMAL: a power loss
// may take the last commits, a crash does not).
type SQLite struct {
	db    *sql.DB  // writes and lists
	reads *readers // GETs, see reader.go
}

// FileName is the database's name in the store's directory.
const FileName = "kv.sqlite"

// OpenSQLite opens (creating it if needed) the store in dir.
func OpenSQLite(dir string) (*SQLite, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("kv store %s: %w", dir, err)
	}
	dsn := "file:" + filepath.Join(dir, FileName) +
		"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("kv store %s: %w", dir, err)
	}
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS kv (ns TEXT NOT NULL, k BLOB NOT NULL, v BLOB NOT NULL, PRIMARY KEY (ns, k)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (ns TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID;`); err != nil {
		db.Close()
		return nil, fmt.Errorf("kv store %s: %w", dir, err)
	}
	return &SQLite{db: db, reads: newReaders(filepath.Join(dir, FileName))}, nil
}

func (s *SQLite) Close() error {
	s.reads.close()
	return s.db.Close()
}

func (s *SQLite) Get(ctx context.Context, ns string, key []byte) ([]byte, error) {
	r, err := s.reads.take()
	if err != nil {
		return nil, err
	}
	v, err := r.lookup(ns, key)
	s.reads.put(r, err != nil && err != ErrNotFound)
	return v, err
}

// write runs f in a write transaction with the namespace's usage before
// it; f returns the change in bytes, checked against quota.
func (s *SQLite) write(ctx context.Context, ns string, quota int64, f func(tx *sql.Tx) (int64, error)) error {
	tx, err := s.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE (_txlock): the write lock first
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var used int64
	if err := tx.QueryRowContext(ctx, `SELECT bytes FROM usage WHERE ns = ?`, ns).Scan(&used); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	d, err := f(tx)
	if err != nil {
		return err
	}
	if d > 0 && quota > 0 && used+d > quota {
		return ErrQuota
	}
	if d != 0 {
		if _, err := tx.ExecContext(ctx, `INSERT INTO usage (ns, bytes) VALUES (?, ?) ON CONFLICT (ns) DO UPDATE SET bytes = bytes + excluded.bytes`, ns, d); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// old is the size of key's entry in tx (0: none) and its value.
func old(ctx context.Context, tx *sql.Tx, ns string, key []byte) (int64, []byte, bool, error) {
	var v []byte
	err := tx.QueryRowContext(ctx, `SELECT v FROM kv WHERE ns = ? AND k = ?`, ns, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, false, nil
	}
	if err != nil {
		return 0, nil, false, err
	}
	return int64(len(key) + len(v)), v, true, nil
}

func (s *SQLite) Set(ctx context.Context, ns string, key, value []byte, quota int64) error {
	return s.write(ctx, ns, quota, func(tx *sql.Tx) (int64, error) {
		was, _, _, err := old(ctx, tx, ns, key)
		if err != nil {
			return 0, err
		}
		if value == nil {
			value = []byte{} // NOT NULL: an empty value is a value
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO kv (ns, k, v) VALUES (?, ?, ?) ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v`, ns, key, value)
		return int64(len(key)+len(value)) - was, err
	})
}

func (s *SQLite) Delete(ctx context.Context, ns string, key []byte) error {
	return s.write(ctx, ns, 0, func(tx *sql.Tx) (int64, error) {
		was, _, found, err := old(ctx, tx, ns, key)
		if err != nil || !found {
			return 0, err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM kv WHERE ns = ? AND k = ?`, ns, key)
		return -was, err
	})
}

func (s *SQLite) Add(ctx context.Context, ns string, key []byte, delta int64, quota int64) (int64, error) {
	var sum int64
	err := s.write(ctx, ns, quota, func(tx *sql.Tx) (int64, error) {
		was, v, found, err := old(ctx, tx, ns, key)
		if err != nil {
			return 0, err
		}
		if sum, err = addInt(v, found, delta); err != nil {
			return 0, err
		}
		nv := strconv.AppendInt(nil, sum, 10)
		_, err = tx.ExecContext(ctx, `INSERT INTO kv (ns, k, v) VALUES (?, ?, ?) ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v`, ns, key, nv)
		return int64(len(key)+len(nv)) - was, err
	})
	return sum, err
}

func (s *SQLite) List(ctx context.Context, ns string, prefix []byte, limit int) ([][]byte, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT k FROM kv WHERE ns = ? AND k >= ? ORDER BY k LIMIT ?`, ns, prefix, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keys [][]byte
	for rows.Next() && len(keys) < limit {
		var k []byte
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		if !bytes.HasPrefix(k, prefix) {
			break // past the prefix's range: keys are in byte order
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}
