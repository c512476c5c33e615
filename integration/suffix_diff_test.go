//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
)

// diffEntry is one entry of the suffix differential list.
type diffEntry struct {
	name        string
	below, apex bool // covers the names under it / the name itself
	allow       bool
}

func (e diffEntry) covers(n string) bool {
	if n == e.name {
		return e.apex
	}
	return e.below && strings.HasSuffix(n, "."+e.name)
}

// TestDifferentialSuffixes is the differential test for suffix entries and
// exceptions: a blocklist mixing exact names, *.d, ||d^ and @@||d^; queries
// at the entries, under them, next to them (a character glued to the first
// label, so the suffix is there but not at a label boundary), near misses
// and random names, in random case and layouts over UDP/TCP and IPv4/IPv6.
// The generator's plain precedence (an exception wins, else any block
// entry blocks) must agree with nftdns check, and the kernel with check.
// NFTDNS_DIFF_N sets the number of queries (default 1500).
func TestDifferentialSuffixes(t *testing.T) {
	requireRoot(t)
	n := diffEnvInt(t, "NFTDNS_DIFF_N", 1500)
	seed := diffSeed(t)
	t.Logf("seed %d (repeat with NFTDNS_DIFF_SEED=%d), %d queries", seed, seed, n)
	g := newDiffGen(seed)
	ctx := testCtx(t, 2*time.Minute+time.Duration(n)*10*time.Millisecond)
	start := time.Now()
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)

	var entries []diffEntry
	var lines []string
	residual := 0
	for _, name := range g.listedNames(400) {
		if len(name) > 200 || strings.HasPrefix(name, "-") {
			continue // room for labels in front; "-" reads as a flag in check
		}
		// The documented limits of suffix entries (README, suffix entries):
		// a first label of 45 or 48-57 characters, more than 124 wire
		// bytes, or a fold twin. Such names stay exact entries here; rules
		// tests cover the limits.
		first, _, _ := strings.Cut(name, ".")
		isResidual := len(first) == 45 || len(first) >= 48 && len(first) <= 57 || len(name)+2 > 124 || len(diffFoldTwins(name, 1)) > 0
		var e diffEntry
		var line string
		written := name
		if g.r.IntN(4) == 0 {
			written = g.randomCase(name)
		}
		k := g.r.IntN(7)
		if isResidual {
			residual++
			k = 0
		}
		switch k {
		case 0, 1:
			e, line = diffEntry{name: name, apex: true}, written
		case 2:
			e, line = diffEntry{name: name, below: true}, "*."+written
		case 3, 4:
			e, line = diffEntry{name: name, below: true, apex: true}, "||"+written+"^"
		case 5:
			e, line = diffEntry{name: name, below: true, apex: true, allow: true}, "@@||"+written+"^"
		default:
			e, line = diffEntry{name: name, below: true, apex: true}, "address=/"+written+"/0.0.0.0"
		}
		entries = append(entries, e)
		lines = append(lines, line)
	}
	t.Logf("%d entries, %d kept exact (suffix limits)", len(entries), residual)
	listPath := filepath.Join(t.TempDir(), "suffix-diff.list")
	if err := os.WriteFile(listPath, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, topo, cli, listPath)
	truth := func(name string) bool {
		blocked := false
		for _, e := range entries {
			if e.covers(name) {
				if e.allow {
					return false
				}
				blocked = true
			}
		}
		return blocked
	}

	qs := make([]*diffQuery, 0, n)
	for len(qs) < n {
		e := entries[g.r.IntN(len(entries))]
		var name, kind string
		switch k := g.r.IntN(10); {
		case k < 2:
			name, kind = e.name, "entry"
		case k < 5:
			name, kind = g.randomName(3+g.r.IntN(12))+"."+e.name, "under"
		case k < 7: // the suffix's bytes, but not at a label boundary
			glue := []string{"0", "x0", "x-", "9", "a"}[g.r.IntN(5)]
			name, kind = glue+e.name, "glued"
		case k < 9:
			name, kind = g.nearMiss(e.name)
		default:
			name, kind = g.randomName(g.wireLen()), "random"
		}
		name = strings.ToLower(name)
		if !diffValidName(name) || len(name) > 253 || strings.HasPrefix(name, "-") {
			continue
		}
		q := &diffQuery{
			name:   g.randomCase(name),
			kind:   kind,
			layout: diffLayout(g.r.IntN(int(diffNumLayouts))),
			fam:    harness.Families[g.r.IntN(2)],
			proto:  harness.Protos[g.r.IntN(2)],
			qtype:  []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT}[g.r.IntN(3)],
			truth:  truth(name),
		}
		q.wire = g.message(q)
		qs = append(qs, q)
	}
	diffRunCheck(t, ctx, cli, listPath, qs)
	for _, q := range qs {
		if q.block != q.truth {
			t.Errorf("check disagrees with the generator: %s: check says %q, generator blocked=%v", q, q.check, q.truth)
		}
	}
	diffCompare(t, ctx, topo, cli, qs, seed, start)
}
