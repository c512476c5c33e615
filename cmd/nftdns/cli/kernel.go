package cli

import (
	"context"
	"errors"
	"time"

	"nftdns/rules"
)

// kernel is the part of the nft package the CLI uses. It sits behind an
// interface so that the commands can be tested without root against a fake
// (see fake_test.go); openNFT gives the real one.
type kernel interface {
	// Apply replaces the table rs.Table atomically.
	Apply(ctx context.Context, rs *rules.Ruleset) (*applyStats, error)
	// ApplyOver is Apply, sent as set element changes only when base
	// (applied with baseID) is still what the kernel holds and rs differs
	// from it only in elements; a full apply is marked with id.
	ApplyOver(ctx context.Context, rs, base *rules.Ruleset, baseID, id []byte) (*applyStats, error)
	// Flush deletes the table; existed is false when there was none.
	Flush(ctx context.Context, table string) (existed bool, err error)
	// Counters reads the table's named counters; errNoTable when absent.
	Counters(ctx context.Context, table string) (map[string]counterValue, error)
	TableExists(ctx context.Context, table string) (bool, error)
	// LinkExists reports whether the namespace has an interface of that name.
	LinkExists(ctx context.Context, name string) (bool, error)
	Close() error
}

// applyStats describes one successful Apply.
type applyStats struct {
	Elements, Messages, Bytes int
	Duration                  time.Duration
	Generation                uint32 // the kernel's ruleset generation after the commit

	ApplyID        []byte // the apply id the table's rules carry now
	Incremental    bool   // sent as set element changes only
	Added, Removed int    // kernel elements, for an incremental apply
	Fallback       string // why a full apply was made when an incremental one was asked
}

// counterValue is a named counter's value.
type counterValue struct {
	Packets, Bytes uint64
}

var (
	// errConcurrentChange: the kernel refused the batch because the
	// ruleset generation moved between reading and committing.
	errConcurrentChange = errors.New("ruleset changed concurrently")
	// errNoTable: the table does not exist.
	errNoTable = errors.New("table not present")
)
