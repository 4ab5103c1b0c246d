package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	// The drivers mautrix-go's bridges register (bridgev2/matrix/connector.go): lib/pq for
	// PostgreSQL, and "sqlite3-fk-wal" (mattn/go-sqlite3 with their pragmas) for SQLite.
	"github.com/lib/pq"
	"go.mau.fi/util/dbutil"
	_ "go.mau.fi/util/dbutil/litestream"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"
)

// pickleKey stands in for a bridge's configured encryption.pickle_key.
var pickleKey = []byte("matrix-crypto-node bench pickle key")

// openStore opens mautrix-go's crypto store for one machine:
//   - memory: crypto.MemoryStore;
//   - sqlite: crypto.SQLCryptoStore on a database file of its own, opened as the bridges' config
//     says (type sqlite3-fk-wal: foreign_keys on, WAL, synchronous NORMAL, busy_timeout 5000;
//     URI file:<path>?_txlock=immediate; max_open_conns 5, max_idle_conns 1);
//   - postgres: crypto.SQLCryptoStore on the server named by MCN_BENCH_POSTGRES (the driver
//     starts one with PostgreSQL's default durability), with the same pool settings and a new
//     account id per run, as many accounts share one database in mautrix-go.
//
// The returned function closes the database.
func openStore(ctx context.Context, kind, dir string, user id.UserID, device id.DeviceID, run string) (crypto.Store, func(), error) {
	var config dbutil.Config
	config.MaxOpenConns = 5
	config.MaxIdleConns = 1
	switch kind {
	case "memory":
		return crypto.NewMemoryStore(nil), func() {}, nil
	case "sqlite":
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, err
		}
		config.Type = "sqlite3-fk-wal"
		config.URI = fmt.Sprintf("file:%s?_txlock=immediate", filepath.Join(dir, "mautrix-crypto.db"))
	case "postgres":
		url := os.Getenv("MCN_BENCH_POSTGRES")
		if url == "" {
			return nil, nil, fmt.Errorf("the postgres store needs MCN_BENCH_POSTGRES")
		}
		// scripts/postgres.sh's server listens on a unix socket only, without TLS.
		if !strings.Contains(url, "sslmode=") {
			url += " sslmode=disable"
		}
		config.Type = "postgres"
		config.URI = url
		// The SQL store's Postgres paths pass user lists as arrays through this, as the
		// bridges set it (bridgev2/matrix/crypto.go).
		crypto.PostgresArrayWrapper = pq.Array
	default:
		return nil, nil, fmt.Errorf("mautrix-go has no store %q here (memory, sqlite, postgres)", kind)
	}
	db, err := dbutil.NewFromConfig("", config, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s database: %w", kind, err)
	}
	accountID := fmt.Sprintf("%s/%s/%s", user, device, run)
	store := crypto.NewSQLCryptoStore(db, nil, accountID, device, pickleKey)
	if err := store.DB.Upgrade(ctx); err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("create mautrix-go's crypto tables: %w", err)
	}
	return store, func() { _ = db.Close() }, nil
}
