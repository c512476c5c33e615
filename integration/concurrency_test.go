//go:build linux

package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// concCounters matches the counter values in `nft list` output, the only
// part of an nftdns table that changes without an apply.
var concCounters = regexp.MustCompile(`packets [0-9]+ bytes [0-9]+`)

// concRulesetGen matches the kernel ruleset generation apply and rollback
// print after committing.
var concRulesetGen = regexp.MustCompile(`ruleset generation ([0-9]+)`)

// concStateGen matches the state directory generation apply prints.
var concStateGen = regexp.MustCompile(`applied generation ([0-9]+)`)

// concResult is one finished nftdns command.
type concResult struct {
	who string // which list or operation, for messages
	res harness.CmdResult
}

// rulesetGen is the kernel generation the command's commit created, -1 if
// it printed none (it failed).
func (r concResult) rulesetGen() int {
	m := concRulesetGen.FindStringSubmatch(r.res.Stdout)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// refused reports whether the command failed the documented way for a
// concurrent change: exit 1 and the "changed concurrently ... retry"
// message.
func (r concResult) refused() bool {
	return r.res.Code == 1 && strings.Contains(r.res.Stderr, "changed concurrently") && strings.Contains(r.res.Stderr, "retry")
}

// concAtOnce runs the commands at the same instant and returns their
// results in order.
func concAtOnce(t *testing.T, ctx context.Context, cmds ...func() (string, harness.CmdResult, error)) []concResult {
	t.Helper()
	out := make([]concResult, len(cmds))
	errs := make([]error, len(cmds))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range cmds {
		wg.Go(func() {
			<-start
			out[i].who, out[i].res, errs[i] = c()
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", out[i].who, err)
		}
	}
	return out
}

// concListTable returns `nft list table inet nftdns` with the counter
// values blanked.
func concListTable(t *testing.T, ctx context.Context, ns string) string {
	t.Helper()
	res, err := harness.Nft(ctx, ns, "list", "table", "inet", "nftdns")
	if err != nil || res.Code != 0 {
		t.Fatalf("list table inet nftdns: %v\n%s", err, res)
	}
	return concCounters.ReplaceAllString(res.Stdout, "packets N bytes N")
}

// concStatus returns the current generation and the first list path that
// `status --json` reports for a state directory.
func concStatus(t *testing.T, ctx context.Context, cli *harness.CLI) (gen int, list string) {
	t.Helper()
	res := mustRun(t, ctx, cli, "status", "--json")
	st, err := harness.ParseStatus(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	if lists, ok := st.Raw["lists"].([]any); ok && len(lists) > 0 {
		if l, ok := lists[0].(map[string]any); ok {
			list, _ = l["path"].(string)
		}
	}
	if !st.HasGeneration {
		return -1, list
	}
	return int(st.Generation), list
}

// concList is a blocklist with a name no other list of the test has.
type concList struct {
	path   string
	unique string
}

// concLists writes lists that all block blockedName and each one unique
// name.
func concLists(t *testing.T, ids ...string) map[string]concList {
	out := map[string]concList{}
	for _, id := range ids {
		u := "list-" + id + "-only.example"
		out[id] = concList{writeList(t, id+".list", blockedName, u), u}
	}
	return out
}

// concRefs applies each list once and records its table listing: the
// reference a table must equal exactly after a race.
func concRefs(t *testing.T, ctx context.Context, topo *harness.Topology, cli *harness.CLI, lists map[string]concList, order ...string) map[string]string {
	t.Helper()
	refs := map[string]string{}
	for _, id := range order {
		apply(t, ctx, topo, cli, lists[id].path)
		refs[id] = concListTable(t, ctx, topo.Box)
	}
	for _, a := range order {
		for _, b := range order {
			if a < b && refs[a] == refs[b] {
				t.Fatalf("lists %s and %s give the same table: the check cannot tell them apart", a, b)
			}
		}
	}
	return refs
}

// concCheck checks that the kernel holds exactly the table of list want:
// its listing equals the reference, its unique name is blocked, every
// other list's unique name is answered, and status (of cli's state
// directory) reports that list.
func concCheck(t *testing.T, ctx context.Context, topo *harness.Topology, cli *harness.CLI, stage string, lists map[string]concList, refs map[string]string, want string) {
	t.Helper()
	var listing string
	var outs []harness.Outcome
	var wg sync.WaitGroup
	wg.Go(func() {
		var qs []harness.Query
		for _, l := range lists {
			timeout := harness.DefaultTimeout
			if l.unique == lists[want].unique {
				timeout = 500 * time.Millisecond
			}
			qs = append(qs, harness.Query{Name: l.unique, Server: harness.Listen4, Timeout: timeout})
		}
		outs = harness.ExchangeAll(ctx, topo.Client, qs, len(qs))
	})
	listing = concListTable(t, ctx, topo.Box)
	wg.Wait()

	if listing != refs[want] {
		match := "none of the lists"
		for id, r := range refs {
			if listing == r {
				match = "list " + id
			}
		}
		t.Errorf("%s: the kernel table is not list %s's; it matches %s", stage, want, match)
	}
	for _, o := range outs {
		blocked := o.Query.Name == lists[want].unique
		if blocked == o.Answered() {
			t.Errorf("%s: with list %s applied, %s", stage, want, o)
		}
	}
	if _, path := concStatus(t, ctx, cli); path != lists[want].path {
		t.Errorf("%s: status --json reports list %q, the kernel has %q", stage, path, lists[want].path)
	}
}

// concLater returns the result whose commit came last (highest ruleset
// generation) among those that exited 0.
func concLater(rs []concResult) (concResult, bool) {
	var best concResult
	found := false
	for _, r := range rs {
		if r.res.Code == 0 && (!found || r.rulesetGen() > best.rulesetGen()) {
			best, found = r, true
		}
	}
	return best, found
}

// concOutcome checks that every command either succeeded or was refused as
// a concurrent change, and that at least one succeeded; it returns "0/0"
// or "refused".
func concOutcome(t *testing.T, stage string, rs []concResult) string {
	t.Helper()
	ok, refused := 0, 0
	for _, r := range rs {
		switch {
		case r.res.Code == 0:
			ok++
			if r.rulesetGen() < 0 {
				t.Errorf("%s: %s exited 0 without printing the ruleset generation:\n%s", stage, r.who, r.res)
			}
		case r.refused():
			refused++
		default:
			t.Errorf("%s: %s neither succeeded nor was refused as a concurrent change:\n%s", stage, r.who, r.res)
		}
	}
	if ok == 0 {
		t.Errorf("%s: nothing succeeded: %d refused", stage, refused)
	}
	if refused > 0 {
		return "refused"
	}
	return "0/0"
}

// TestConcurrentApply: with one state directory, two applies of different
// lists started at once, and an apply started together with a rollback,
// are serialised by the state lock (or one is refused as a concurrent
// change): each round ends with exactly one list's table in the kernel,
// the later one, and status agrees.
func TestConcurrentApply(t *testing.T) {
	t.Parallel()
	const rounds = 3
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	lists := concLists(t, "a", "b", "c")
	refs := concRefs(t, ctx, topo, cli, lists, "a", "b", "c")
	run := func(sub, id string, args ...string) func() (string, harness.CmdResult, error) {
		return func() (string, harness.CmdResult, error) {
			res, err := cli.Run(ctx, sub, args...)
			return sub + " " + id, res, err
		}
	}

	t.Run("apply-apply", func(t *testing.T) {
		tally := map[string]int{}
		for i := range rounds {
			stage := fmt.Sprintf("round %d", i+1)
			rs := concAtOnce(t, ctx,
				run("apply", "a", topo.ApplyArgs(lists["a"].path)...),
				run("apply", "b", topo.ApplyArgs(lists["b"].path)...))
			tally[concOutcome(t, stage, rs)]++
			later, ok := concLater(rs)
			if !ok {
				continue
			}
			concCheck(t, ctx, topo, cli, stage, lists, refs, strings.TrimPrefix(later.who, "apply "))
		}
		t.Logf("apply || apply, one state directory, %d rounds: %v", rounds, tally)
	})

	t.Run("apply-rollback", func(t *testing.T) {
		tally := map[string]int{}
		for i := range rounds {
			stage := fmt.Sprintf("round %d", i+1)
			// History ... a, b: a rollback goes back to a; after an
			// apply of c it goes back to b.
			apply(t, ctx, topo, cli, lists["a"].path)
			apply(t, ctx, topo, cli, lists["b"].path)
			rs := concAtOnce(t, ctx,
				run("apply", "c", topo.ApplyArgs(lists["c"].path)...),
				run("rollback", ""))
			tally[concOutcome(t, stage, rs)]++
			ap, rb := rs[0], rs[1]
			var want string
			switch {
			case ap.res.Code == 0 && rb.res.Code == 0 && ap.rulesetGen() > rb.rulesetGen():
				want = "c" // rollback to a, then apply c
			case ap.res.Code == 0 && rb.res.Code == 0:
				want = "b" // apply c, then rollback to b
			case ap.res.Code == 0:
				want = "c"
			case rb.res.Code == 0:
				want = "a"
			default:
				continue
			}
			concCheck(t, ctx, topo, cli, stage, lists, refs, want)
		}
		t.Logf("apply || rollback, one state directory, %d rounds: %v", rounds, tally)
	})
}

// TestConcurrentApplyRace: two applies with different state directories
// (so the state lock does not serialise them: two operators, or two
// tools) started at once, 20 times. The generation guard must make every
// pair end either with both committed one after the other (exit 0/0, the
// kernel holding the later one's table) or with one refused (exit 1, the
// concurrent-change message) and nothing of it applied or recorded; never
// a mixed table.
func TestConcurrentApplyRace(t *testing.T) {
	t.Parallel()
	const pairs = 20
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	clis := map[string]*harness.CLI{"a": cliFor(t, topo), "b": cliFor(t, topo)}
	lists := concLists(t, "a", "b")
	refs := concRefs(t, ctx, topo, clis["a"], lists, "b", "a")
	run := func(id string) func() (string, harness.CmdResult, error) {
		return func() (string, harness.CmdResult, error) {
			res, err := clis[id].Run(ctx, "apply", topo.ApplyArgs(lists[id].path)...)
			return id, res, err
		}
	}
	// Each state directory's current generation, as its applies report
	// it: a refused apply must not change it.
	gens := map[string]int{}
	gens["a"], _ = concStatus(t, ctx, clis["a"])
	gens["b"], _ = concStatus(t, ctx, clis["b"])
	tally := map[string]int{}
	for i := range pairs {
		stage := fmt.Sprintf("pair %d", i+1)
		rs := concAtOnce(t, ctx, run("a"), run("b"))
		tally[concOutcome(t, stage, rs)]++
		later, ok := concLater(rs)
		if !ok {
			continue
		}
		concCheck(t, ctx, topo, clis[later.who], stage, lists, refs, later.who)
		for _, r := range rs {
			if r.res.Code == 0 {
				if m := concStateGen.FindStringSubmatch(r.res.Stdout); m != nil {
					gens[r.who], _ = strconv.Atoi(m[1])
				}
				continue
			}
			// Refused: nothing recorded in its state directory.
			if g, _ := concStatus(t, ctx, clis[r.who]); g != gens[r.who] {
				t.Errorf("%s: the refused apply of %s changed its state directory's generation from %d to %d", stage, r.who, gens[r.who], g)
			}
		}
	}
	t.Logf("apply || apply with separate state directories, %d pairs: %v (0/0 = both committed in turn; refused = one exited 1, concurrent change)", pairs, tally)
}

// concBigList writes a list of n names plus the marker name.
func concBigList(t *testing.T, n int, marker string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "big.list")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, marker)
	for i := range n {
		fmt.Fprintf(w, "n%d-%08x.big-list.example\n", i, uint32(i)*2654435761)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConcurrentForeignChange: while nftdns applies a big list (100,000
// names, so parsing, compiling and building the batch take a while),
// another program changes the ruleset (`nft add chain inet intruder ...`,
// each a commit). The apply either succeeds, with the intruder's table
// intact, or exits 1 with the concurrent-change message and leaves the
// previous nftdns table byte-identical.
//
// The intruder runs in four ways: without pause from the start of the
// apply to its end, and from halfway; and as a single change at the start
// (most likely while nftdns still parses and compiles, before it reads the
// ruleset generation: no reason to refuse) and at halfway. "Halfway" is
// half of the shortest apply run so far (a quiet one is measured first).
func TestConcurrentForeignChange(t *testing.T) {
	t.Parallel()
	const (
		names         = 100000
		maxIntrusions = 1000 // per round
		burst         = 1
		marker        = "big-list-marker.example"
	)
	ctx := testCtx(t, 4*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	small := standardList(t)
	big := concBigList(t, names, marker)
	if res, err := harness.Nft(ctx, topo.Box, "add", "table", "inet", "intruder"); err != nil || res.Code != 0 {
		t.Fatalf("add intruder table: %v\n%s", err, res)
	}
	apply(t, ctx, topo, cli, small)
	start := time.Now()
	apply(t, ctx, topo, cli, big)
	quiet := time.Since(start)

	type round struct {
		halfway bool // start halfway through (else at the start)
		max     int  // commits at most
	}
	rounds := []round{{false, maxIntrusions}, {false, burst}, {true, maxIntrusions}, {true, burst}}
	fastest := quiet // the shortest apply seen: the machine may be busy
	var intruderChains []string
	tally := map[string]int{}
	for r, rd := range rounds {
		stage := fmt.Sprintf("round %d", r+1)
		apply(t, ctx, topo, cli, small)
		prev, err := harness.Nft(ctx, topo.Box, "list", "table", "inet", "nftdns")
		if err != nil || prev.Code != 0 {
			t.Fatalf("list nftdns: %v\n%s", err, prev)
		}

		done := make(chan struct{})
		var res harness.CmdResult
		var runErr error
		start = time.Now()
		go func() {
			defer close(done)
			res, runErr = cli.Run(ctx, "apply", topo.ApplyArgs(big)...)
		}()
		added, failed := 0, 0
		var delay time.Duration
		if rd.halfway {
			delay = fastest / 2
		}
		select {
		case <-time.After(delay):
		case <-done:
		}
	loop:
		for i := 0; i < rd.max; i++ {
			select {
			case <-done:
				break loop
			default:
			}
			chain := fmt.Sprintf("r%dc%d", r, i)
			ir, err := harness.Nft(ctx, topo.Box, "add", "chain", "inet", "intruder", chain)
			if err == nil && ir.Code == 0 {
				added++
				intruderChains = append(intruderChains, chain)
			} else {
				failed++
			}
		}
		<-done
		elapsed := time.Since(start)
		if runErr != nil {
			t.Fatalf("%s: %v", stage, runErr)
		}
		fastest = min(fastest, elapsed)

		outcome := ""
		switch {
		case res.Code == 0:
			outcome = "applied"
			mk := query(ctx, topo, harness.Query{Name: marker, Server: harness.Listen4, Timeout: 500 * time.Millisecond})
			if mk.Answered() {
				t.Errorf("%s: apply succeeded but the big list's marker is answered: %s", stage, mk)
			}
			if _, path := concStatus(t, ctx, cli); path != big {
				t.Errorf("%s: status reports list %q after the big apply", stage, path)
			}
		case concResult{res: res}.refused():
			outcome = "refused"
			now, err := harness.Nft(ctx, topo.Box, "list", "table", "inet", "nftdns")
			if err != nil || now.Code != 0 {
				t.Fatalf("list nftdns: %v\n%s", err, now)
			}
			if now.Stdout != prev.Stdout {
				t.Errorf("%s: refused apply changed the nftdns table\nbefore:\n%.2000s\nafter:\n%.2000s", stage, prev.Stdout, now.Stdout)
			}
			if _, path := concStatus(t, ctx, cli); path != small {
				t.Errorf("%s: status reports list %q after a refused apply, want the previous %q", stage, path, small)
			}
		default:
			t.Errorf("%s: apply neither succeeded nor was refused as a concurrent change:\n%s", stage, res)
		}
		tally[outcome]++
		mode := "until the apply ended"
		if rd.max < maxIntrusions {
			mode = fmt.Sprintf("at most %d change(s)", rd.max)
		}
		t.Logf("%s: intruder started %s into the apply (quiet apply %s, this one %s), %s: added %d chains (%d nft failures): %s",
			stage, delay.Round(time.Millisecond), quiet.Round(time.Millisecond), elapsed.Round(time.Millisecond), mode, added, failed, outcome)
	}

	// The intruder's table holds every chain it added, whatever nftdns did.
	ir, err := harness.Nft(ctx, topo.Box, "list", "table", "inet", "intruder")
	if err != nil || ir.Code != 0 {
		t.Fatalf("list intruder: %v\n%s", err, ir)
	}
	if got := strings.Count(ir.Stdout, "\tchain "); got != len(intruderChains) {
		t.Errorf("intruder table has %d chains, it added %d", got, len(intruderChains))
	}
	for _, c := range intruderChains {
		if !strings.Contains(ir.Stdout, "chain "+c+" {") {
			t.Errorf("intruder chain %s is gone", c)
		}
	}
	t.Logf("big apply (%d names) racing a foreign ruleset change, %d rounds: %v", names, len(rounds), tally)
}
