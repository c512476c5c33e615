//go:build linux

package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// TestBadListRejected: an invalid line makes apply exit 2 naming FILE:LINE,
// and the kernel ruleset is left byte-identical, both on an empty box and
// over a previous apply.
func TestBadListRejected(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	for _, tc := range []struct {
		desc       string
		applyFirst bool
	}{
		{"empty-box", false},
		{"over-previous-apply", true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			topo := newTopo(t, ctx)
			cli := cliFor(t, topo)
			if tc.applyFirst {
				apply(t, ctx, topo, cli, standardList(t))
			}
			before, err := harness.ListRuleset(ctx, topo.Box)
			if err != nil {
				t.Fatal(err)
			}
			bad := writeList(t, "bad.list", "# line 1", "good.example", "bad name!", "other.example")
			res, err := cli.Run(ctx, "apply", topo.ApplyArgs(bad)...)
			if err != nil {
				t.Fatal(err)
			}
			if res.Code != 2 {
				t.Errorf("want exit 2 for a bad list, got:\n%s", res)
			}
			if want := bad + ":3:"; !strings.Contains(res.Stderr, want) {
				t.Errorf("stderr should name %q, got:\n%s", want, res.Stderr)
			}
			after, err := harness.ListRuleset(ctx, topo.Box)
			if err != nil {
				t.Fatal(err)
			}
			if before != after {
				t.Errorf("ruleset changed by a rejected apply\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if tc.applyFirst {
				// The old list still works.
				expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Server: harness.Listen4, Timeout: blockTimeout}))
				expectAnswered(t, topo, query(ctx, topo, harness.Query{Name: "good.example", Server: harness.Listen4}), harness.V4)
			}
		})
	}
}

// TestReapplyUnderLoad: 20 applies alternating between two lists that both
// block the same name, while clients query in a loop over all four
// family/transport pairs: the blocked name never gets through and no
// allowed query is lost.
func TestReapplyUnderLoad(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	listA := writeList(t, "a.list", blockedName, "list-a-only.example")
	listB := writeList(t, "b.list", "list-b-only.example", blockedName)
	apply(t, ctx, topo, cli, listA)

	const (
		applies     = 20
		maxQueries  = 50000           // per worker: bounds the loop in count
		maxDuration = 2 * time.Minute // and in time
	)
	loadCtx, stop := context.WithTimeout(ctx, maxDuration)
	defer stop()

	var mu sync.Mutex
	var allowedOK, allowedLost, blockedSent, blockedAnswered int
	var failures []string
	note := func(s string) {
		if len(failures) < 10 {
			failures = append(failures, s)
		}
	}
	var wg sync.WaitGroup
	for w := range 4 {
		c := combos()[w]
		// One allowed and one blocked querier per pair; allowed
		// queries wait long enough that only a real loss times out.
		wg.Go(func() {
			for i := 0; i < maxQueries && loadCtx.Err() == nil; i++ {
				o := harness.Exchange(loadCtx, topo.Client, harness.Query{Name: fmt.Sprintf("ok%d-%d.example", w, i), Proto: c.p, Server: listen(c.f), Timeout: 3 * time.Second})
				if loadCtx.Err() != nil && !o.Answered() {
					return // stopped mid-query: not a loss
				}
				mu.Lock()
				if o.Answered() && o.Upstream != 0 {
					allowedOK++
				} else {
					allowedLost++
					note(o.String())
				}
				mu.Unlock()
			}
		})
		// Blocked queries cost their timeout, so several workers each.
		for range 3 {
			wg.Go(func() {
				for i := 0; i < maxQueries && loadCtx.Err() == nil; i++ {
					o := harness.Exchange(loadCtx, topo.Client, harness.Query{Name: blockedName, Case: harness.Random, Proto: c.p, Server: listen(c.f), Timeout: 200 * time.Millisecond})
					mu.Lock()
					blockedSent++
					if o.Answered() {
						blockedAnswered++
						note(o.String())
					}
					mu.Unlock()
				}
			})
		}
	}

	for i := range applies {
		list := listB
		if i%2 == 1 {
			list = listA
		}
		res, err := cli.Run(ctx, "apply", topo.ApplyArgs(list)...)
		if err != nil || res.Code != 0 {
			t.Errorf("apply %d: err=%v\n%s", i+1, err, res)
		}
		time.Sleep(50 * time.Millisecond) // let queries land between applies
	}
	// A little load after the last apply too, then stop.
	time.Sleep(300 * time.Millisecond)
	stop()
	wg.Wait()

	leaked := topo.Log.CountName(blockedName)
	t.Logf("allowed answered %d, lost %d; blocked sent %d, answered %d, reached upstreams %d",
		allowedOK, allowedLost, blockedSent, blockedAnswered, leaked)
	if allowedLost != 0 {
		t.Errorf("%d allowed queries lost during re-applies", allowedLost)
	}
	if blockedAnswered != 0 || leaked != 0 {
		t.Errorf("blocked name got through during re-applies: %d answers, %d at the upstreams", blockedAnswered, leaked)
	}
	if allowedOK < 4*applies || blockedSent < 2*applies {
		t.Errorf("too little load to mean anything: %d allowed, %d blocked queries", allowedOK, blockedSent)
	}
	for _, f := range failures {
		t.Log(f)
	}
}

// TestFlushLeavesForeignTable: flush removes nftdns's table and nothing
// else: another table in the same family is byte-identical afterwards.
func TestFlushLeavesForeignTable(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	foreign := `
table inet foreign {
	chain input {
		type filter hook input priority 10; policy accept;
		tcp dport 2222 counter accept
	}
}
`
	if err := harness.NftScript(ctx, topo.Box, foreign); err != nil {
		t.Fatal(err)
	}
	listForeign := func() string {
		res, err := harness.Nft(ctx, topo.Box, "list", "table", "inet", "foreign")
		if err != nil || res.Code != 0 {
			t.Fatalf("list foreign table: %v\n%s", err, res)
		}
		return res.Stdout
	}
	before := listForeign()
	apply(t, ctx, topo, cli, standardList(t))
	mustRun(t, ctx, cli, "flush")
	if after := listForeign(); after != before {
		t.Errorf("foreign table changed by apply+flush\nbefore:\n%s\nafter:\n%s", before, after)
	}
	doc, err := harness.ListRulesetJSON(ctx, topo.Box)
	if err != nil {
		t.Fatal(err)
	}
	if tables := harness.Tables(doc); !slices.Equal(tables, []string{"inet foreign"}) {
		t.Errorf("after flush want only the foreign table, kernel has %v", tables)
	}
	// Flushing again (nothing to flush) must not fail or touch others.
	if res, err := cli.Run(ctx, "flush"); err != nil || res.Code != 0 {
		t.Errorf("second flush: err=%v\n%s", err, res)
	}
	if after := listForeign(); after != before {
		t.Errorf("foreign table changed by a second flush")
	}
}

// TestRollback: apply A, apply B, rollback => A's names are blocked again
// and names only B listed pass.
func TestRollback(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	listA := writeList(t, "a.list", blockedName, "list-a-only.example")
	listB := writeList(t, "b.list", blockedName, "list-b-only.example")

	check := func(stage string, blocked, allowed []string) {
		t.Helper()
		for _, c := range combos() {
			for _, n := range blocked {
				o := query(ctx, topo, harness.Query{Name: n, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout})
				if o.Answered() {
					t.Errorf("%s: %s should be blocked: %s", stage, n, o)
				}
			}
			for _, n := range allowed {
				o := query(ctx, topo, harness.Query{Name: n, Proto: c.p, Server: listen(c.f)})
				if !o.Answered() {
					t.Errorf("%s: %s should pass: %s", stage, n, o)
				}
			}
		}
	}
	apply(t, ctx, topo, cli, listA)
	check("after apply A", []string{blockedName, "list-a-only.example"}, []string{"list-b-only.example"})
	apply(t, ctx, topo, cli, listB)
	check("after apply B", []string{blockedName, "list-b-only.example"}, []string{"list-a-only.example"})
	mustRun(t, ctx, cli, "rollback")
	check("after rollback", []string{blockedName, "list-a-only.example"}, []string{"list-b-only.example"})
}

// TestStatusCounters: status --json reports a generation that changes with
// each apply, and its kernel counters move with the queries sent.
func TestStatusCounters(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	apply(t, ctx, topo, cli, standardList(t))

	status := func() harness.Status {
		t.Helper()
		res := mustRun(t, ctx, cli, "status", "--json")
		st, err := harness.ParseStatus(res.Stdout)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st0 := status()
	if !st0.HasGeneration {
		t.Errorf("status --json has no generation: %v", st0.Raw)
	}
	const n = 5
	for _, c := range combos() {
		var qs []harness.Query
		for i := range n {
			qs = append(qs,
				harness.Query{Name: fmt.Sprintf("count%d.example", i), Proto: c.p, Server: listen(c.f)},
				harness.Query{Name: blockedName, Case: harness.Random, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout})
		}
		for _, o := range harness.ExchangeAll(ctx, topo.Client, qs, 10) {
			if o.Answered() != (o.Query.Name != blockedName) {
				t.Errorf("%s: unexpected %s", c, o)
			}
		}
	}
	st1 := status()
	for _, c := range combos() {
		suffix := fmt.Sprintf("_%s_%s", c.f, c.p)
		delta := func(kind string) (uint64, bool) {
			before, ok0 := st0.Counters[kind+suffix]
			after, ok1 := st1.Counters[kind+suffix]
			if !ok0 || !ok1 {
				t.Errorf("counter %s missing from status --json (have %v)", kind+suffix, st1.Counters)
				return 0, false
			}
			return after - before, true
		}
		// Lower bounds for TCP: handshake packets and retransmitted
		// blocked segments may count too. A blocked UDP query is exactly
		// one packet.
		if d, ok := delta("checked"); ok && d < 2*n {
			t.Errorf("checked%s moved by %d, want >= %d", suffix, d, 2*n)
		}
		if d, ok := delta("passed"); ok && d < n {
			t.Errorf("passed%s moved by %d, want >= %d", suffix, d, n)
		}
		if d, ok := delta("blocked"); ok && (d < n || c.p == harness.UDP && d != n) {
			t.Errorf("blocked%s moved by %d, want %d (UDP exactly)", suffix, d, n)
		}
	}
	// A new apply is a new generation.
	apply(t, ctx, topo, cli, writeList(t, "other.list", "other-list.example"))
	if st2 := status(); !st2.HasGeneration || st2.Generation == st0.Generation {
		t.Errorf("generation did not change with a new apply: %v -> %v", st0.Generation, st2.Generation)
	}
}

// TestRulesetListable: after apply an operator can still list the whole
// ruleset with the stock nft (1.0.6), in text and JSON, and it holds the
// nftdns table (DESIGN §3: some expressions make nft 1.0.6 fail to list).
func TestRulesetListable(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	// The long names make staged, hashed lookups: the rules Debian 12's
	// nft is most likely to choke on.
	apply(t, ctx, topo, cli, standardList(t), longList(t))

	text, err := harness.ListRuleset(ctx, topo.Box)
	if err != nil {
		t.Fatalf("nft list ruleset in the box: %v", err)
	}
	for _, want := range []string{"table inet nftdns", "typeof @th,160,", "jhash @th,160,128"} {
		if !strings.Contains(text, want) {
			t.Errorf("nft list ruleset lacks %q:\n%s", want, text)
		}
	}
	doc, err := harness.ListRulesetJSON(ctx, topo.Box)
	if err != nil {
		t.Fatalf("nft -j list ruleset in the box: %v", err)
	}
	if !slices.Contains(harness.Tables(doc), "inet nftdns") {
		t.Errorf("nft -j list ruleset has no inet nftdns table: %v", harness.Tables(doc))
	}
}
