package cli

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"nftdns/rules"
)

// fakeKernel is an in-memory kernel: Apply replaces a table whole or, when
// told to fail, leaves everything as it was, like an nf_tables batch.
type fakeKernel struct {
	mu       sync.Mutex
	tables   map[string]*rules.Ruleset // by table name
	counters map[string]map[string]counterValue
	gen      uint32

	applyErr error                   // returned by the next Apply, which changes nothing
	onApply  func(rs *rules.Ruleset) // called by Apply, before anything else
	openErr  error                   // returned by open
	opened   []string                // netns of each open
	applies  int
	open     int // connections not closed
}

var _ kernel = (*fakeKernel)(nil)

func newFakeKernel() *fakeKernel {
	return &fakeKernel{tables: map[string]*rules.Ruleset{}, counters: map[string]map[string]counterValue{}}
}

func (k *fakeKernel) opener(netns string) (kernel, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.opened = append(k.opened, netns)
	if k.openErr != nil {
		return nil, k.openErr
	}
	k.open++
	return k, nil
}

func (k *fakeKernel) Apply(_ context.Context, rs *rules.Ruleset) (*applyStats, error) {
	if k.onApply != nil {
		k.onApply(rs)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.applies++
	if err := k.applyErr; err != nil {
		k.applyErr = nil
		return nil, err
	}
	if rs.Table == "" {
		return nil, fmt.Errorf("fake: ruleset without a table")
	}
	for _, s := range rs.Sets {
		if s.Name == "" {
			return nil, fmt.Errorf("fake: unnamed set")
		}
	}
	k.gen++
	k.tables[rs.Table] = rs
	cs := map[string]counterValue{}
	for _, n := range rs.Counters {
		cs[n] = counterValue{}
	}
	k.counters[rs.Table] = cs
	return &applyStats{Elements: rs.ElementCount(), Messages: 3 + len(rs.Sets), Duration: 12 * time.Millisecond, Generation: k.gen}, nil
}

// ApplyOver is a full Apply in the fake, marked with id.
func (k *fakeKernel) ApplyOver(ctx context.Context, rs, _ *rules.Ruleset, _, id []byte) (*applyStats, error) {
	st, err := k.Apply(ctx, rs)
	if err != nil {
		return nil, err
	}
	st.ApplyID = id
	return st, nil
}

func (k *fakeKernel) Flush(_ context.Context, table string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.tables[table]
	delete(k.tables, table)
	delete(k.counters, table)
	if ok {
		k.gen++
	}
	return ok, nil
}

func (k *fakeKernel) Counters(_ context.Context, table string) (map[string]counterValue, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cs, ok := k.counters[table]
	if !ok {
		return nil, fmt.Errorf("table inet %s: %w", table, errNoTable)
	}
	out := make(map[string]counterValue, len(cs))
	for n, v := range cs {
		out[n] = v
	}
	return out, nil
}

// LinkExists: every interface exists except those named "missing*".
func (k *fakeKernel) LinkExists(_ context.Context, name string) (bool, error) {
	return !strings.HasPrefix(name, "missing"), nil
}

func (k *fakeKernel) TableExists(_ context.Context, table string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.tables[table]
	return ok, nil
}

func (k *fakeKernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.open--
	return nil
}

// setCounter sets a counter of a present table, as traffic would.
func (k *fakeKernel) setCounter(table, name string, v counterValue) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.counters[table][name] = v
}
