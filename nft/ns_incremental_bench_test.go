//go:build linux

package nft

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNSIncrementalScale measures, at NFTDNS_INCREMENTAL_NAMES names
// (unset: skipped; the reference run uses 1000000), a full in-place apply
// against an incremental one for the same 1% change, three times each in
// the same run, and logs the medians. It is a measurement, not a check of
// speed: it only fails if an apply fails or is not of the kind asked.
//
//	NFTDNS_INCREMENTAL_NAMES=1000000 go test -run TestNSIncrementalScale -v -timeout 30m ./nft/
func TestNSIncrementalScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("NFTDNS_INCREMENTAL_NAMES"))
	if n <= 0 {
		t.Skip("set NFTDNS_INCREMENTAL_NAMES (e.g. 1000000) to run")
	}
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)
	const table = "nftbench"
	change := max(n/100, 1)

	// Round r lists names[r*change : r*change+n]: each round drops the
	// first 1% and adds 1% new names of the same length.
	all := make([]string, n+7*change)
	r := rand.New(rand.NewPCG(7, 1))
	for i := range all {
		// Many wire lengths (and some over 64 bytes): a set per length.
		all[i] = fmt.Sprintf("n%08d.%s.example", i, strings.Repeat("x", r.IntN(70)+1))
	}
	round := 0
	next := func() []string { round++; return all[round*change : round*change+n] }

	start := time.Now()
	rs := compileNames(t, table, all[:n])
	t.Logf("compile %d names: %v", n, time.Since(start))
	st, err := c.Apply(ctx, rs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first apply (new table): %v", st.Duration)
	base := &Base{Ruleset: rs, ApplyID: st.ApplyID}

	var full, inc []time.Duration
	for range 3 {
		// Full: today's in-place re-apply (rules replaced, big sets
		// flushed and refilled).
		rs = compileNames(t, table, next())
		st, err := c.Apply(ctx, rs)
		if err != nil || st.Incremental {
			t.Fatalf("full apply: %+v %v", st, err)
		}
		full = append(full, st.Duration)
		base = &Base{Ruleset: rs, ApplyID: st.ApplyID}

		rs = compileNames(t, table, next())
		st, err = c.ApplyOver(ctx, rs, base, nil)
		if err != nil || !st.Incremental || st.Added < change || st.Removed < change {
			t.Fatalf("incremental apply: %+v %v", st, err)
		}
		inc = append(inc, st.Duration)
		base = &Base{Ruleset: rs, ApplyID: st.ApplyID}
		t.Logf("full %v, incremental (+%d -%d) %v", full[len(full)-1], st.Added, st.Removed, st.Duration)
	}
	slices.Sort(full)
	slices.Sort(inc)
	t.Logf("%d names, %d changed: full apply median %v, incremental median %v (ratio %.3f)",
		n, change, full[1], inc[1], float64(inc[1])/float64(full[1]))
}
