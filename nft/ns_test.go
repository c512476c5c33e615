//go:build linux

package nft

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

// newTestNS creates a throwaway named network namespace and deletes it when
// the test ends.
func newTestNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: namespace tests need root (to create a network namespace and program nf_tables in it)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipping: the nft binary is needed for cross-checks")
	}
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	name := "nfttest-" + hex.EncodeToString(suffix)

	// netns.NewNamed moves the calling thread into the new namespace: keep
	// the goroutine on this thread until it is back in the original one.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current namespace: %v", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		_ = netns.Set(orig)
		runtime.UnlockOSThread()
		t.Fatalf("create namespace %s: %v", name, err)
	}
	// Register the cleanup before anything else can fail.
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	h.Close()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine instead of
		// serving other goroutines from the wrong namespace.
		t.Fatalf("switch back to the original namespace: %v", err)
	}
	runtime.UnlockOSThread()
	return name
}

// nftIn runs nft in the namespace and returns its stdout.
func nftIn(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := nftInErr(ns, args...)
	if err != nil {
		t.Fatalf("nft %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func nftInErr(ns string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), errors.New(err.Error() + ": " + stderr.String())
	}
	return stdout.String(), nil
}

func openNS(t *testing.T, ns string) *Conn {
	t.Helper()
	c, err := Open(ns)
	if err != nil {
		t.Fatalf("Open(%q): %v", ns, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// nftJSONElements counts the elements of each set of table in
// `nft -j list ruleset`, counting a range as one.
func nftJSONElements(t *testing.T, ns, table string) map[string]int {
	t.Helper()
	out := nftIn(t, ns, "-j", "list", "ruleset")
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j output does not parse: %v", err)
	}
	counts := map[string]int{}
	for _, obj := range doc.Nftables {
		for _, kind := range []string{"set", "map"} {
			raw, ok := obj[kind]
			if !ok {
				continue
			}
			var s struct {
				Table string            `json:"table"`
				Name  string            `json:"name"`
				Elem  []json.RawMessage `json:"elem"`
			}
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatalf("nft -j %s: %v", kind, err)
			}
			if s.Table == table {
				counts[s.Name] = len(s.Elem)
			}
		}
	}
	return counts
}

func TestNSApply(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)

	// A table of someone else's that must survive everything we do.
	nftIn(t, ns, "add", "table", "inet", "foreign")
	nftIn(t, ns, "add", "chain", "inet", "foreign", "c")
	foreign := nftIn(t, ns, "list", "table", "inet", "foreign")

	const bigN = 30000
	rs := testRuleset("nfttest", bigN)
	stats, err := c.Apply(ctx, rs)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	t.Logf("apply of %d elements: %d messages, %d bytes, %v, generation %d",
		stats.Elements, stats.Messages, stats.Bytes, stats.Duration, stats.Generation)
	if stats.Elements != rs.ElementCount() {
		t.Errorf("stats.Elements = %d, want %d", stats.Elements, rs.ElementCount())
	}

	listing := nftIn(t, ns, "list", "ruleset")
	for _, want := range []string{
		"table inet nfttest {",
		`comment "managed by nftdns tests"`,
		"typeof @th,160,104\n",
		"typeof @th,160,512\n",
		"typeof @th,160,512 : meta mark\n",
		"typeof @th,160,104 : verdict\n",
		"typeof numgen inc mod 2 : ip daddr . th dport\n",
		"typeof numgen inc mod 2 : ip6 daddr . th dport\n",
		"jump deeper",
		"dnat ip to numgen inc mod 2 map @upstreams4",
		"dnat ip6 to numgen inc mod 2 map @upstreams6",
		"masquerade",
		"ct state established,related accept",
		"type filter hook prerouting priority raw; policy accept;",
		"type nat hook prerouting priority dstnat; policy accept;",
		"type nat hook postrouting priority srcnat; policy accept;",
		"numgen inc mod 2",
		"jhash ip saddr mod 4 seed 0x1",
		`log prefix "nfttest "`,
		"limit rate 1/second burst 10 packets",
		"counter name \"blocked\"",
		"198.18.0.0/15",
		"192.0.2.0/25, 192.0.2.128/25",
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("nft list ruleset lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("nft list ruleset (without the big set):\n%s", nftIn(t, ns, "-t", "list", "ruleset"))
	}

	counts := nftJSONElements(t, ns, "nfttest")
	for _, s := range rs.Sets {
		if got := counts[s.Name]; got != len(s.Elements) {
			t.Errorf("nft -j: set %s has %d elements, want %d", s.Name, got, len(s.Elements))
		}
	}

	// Re-applying updates the table in place, twice in a row.
	for i := 0; i < 2; i++ {
		if _, err := c.Apply(ctx, rs); err != nil {
			t.Fatalf("re-Apply %d: %v", i+1, err)
		}
	}
	if got := nftJSONElements(t, ns, "nfttest")["big"]; got != bigN {
		t.Errorf("after re-Apply: big has %d elements, want %d", got, bigN)
	}

	ctrs, err := c.Counters(ctx, "nfttest")
	if err != nil {
		t.Fatalf("Counters: %v", err)
	}
	if len(ctrs) != 2 {
		t.Errorf("Counters = %v, want blocked and passed", ctrs)
	}
	for _, n := range []string{"blocked", "passed"} {
		if _, ok := ctrs[n]; !ok {
			t.Errorf("Counters lacks %q", n)
		}
	}

	existed, err := c.Flush(ctx, "nfttest")
	if err != nil || !existed {
		t.Fatalf("Flush = %v, %v; want true, nil", existed, err)
	}
	if ok, err := c.TableExists(ctx, "nfttest"); err != nil || ok {
		t.Errorf("TableExists after Flush = %v, %v", ok, err)
	}
	if got := nftIn(t, ns, "list", "table", "inet", "foreign"); got != foreign {
		t.Errorf("foreign table changed:\n%s\nwant:\n%s", got, foreign)
	}
	existed, err = c.Flush(ctx, "nfttest")
	if err != nil || existed {
		t.Errorf("second Flush = %v, %v; want false, nil", existed, err)
	}
	if _, err := c.Counters(ctx, "nfttest"); !errors.Is(err, ErrNoTable) {
		t.Errorf("Counters of a missing table: %v, want ErrNoTable", err)
	}
}

// badRulesets are rulesets the kernel refuses, at different points of the
// batch.
func badRulesets(table string) map[string]*rules.Ruleset {
	missingChain := testRuleset(table, 100)
	ch := missingChain.Chains[len(missingChain.Chains)-1]
	ch.Rules = append(ch.Rules, rules.Rule{Text: "jump nowhere", Exprs: []rules.Expr{rules.Verdict{Kind: rules.Jump, Chain: "nowhere"}}})

	missingSet := testRuleset(table, 100)
	ch = missingSet.Chains[len(missingSet.Chains)-1]
	ch.Rules = append(ch.Rules, rules.Rule{Text: "ip saddr @nosuchset", Exprs: []rules.Expr{
		rules.Payload{Base: rules.BaseNetwork, Offset: 12, Len: 4, Dst: 0},
		rules.Lookup{Set: "nosuchset", Src: 0},
	}})

	// A 65-byte payload load: past the end of the register file.
	badLoad := testRuleset(table, 100)
	badLoad.Chains[0].Rules = append(badLoad.Chains[0].Rules, rules.Rule{Text: "too long", Exprs: []rules.Expr{
		rules.Payload{Base: rules.BaseTransport, Offset: 20, Len: 65, Dst: 0},
	}})

	// A duplicate element in a big set: refused in the middle of the
	// element messages.
	dup := testRuleset(table, 30000)
	big := dup.Set("big")
	big.Elements = append(big.Elements, big.Elements[17000])

	return map[string]*rules.Ruleset{
		"jump to a missing chain": missingChain,
		"lookup of a missing set": missingSet,
		"register overflow":       badLoad,
		"duplicate element":       dup,
	}
}

func TestNSFailedApplyChangesNothing(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)
	nftIn(t, ns, "add", "table", "inet", "foreign")
	if _, err := c.Apply(ctx, testRuleset("nfttest", 2000)); err != nil {
		t.Fatal(err)
	}
	before := nftIn(t, ns, "list", "ruleset")
	for name, rs := range badRulesets("nfttest") {
		t.Run(name, func(t *testing.T) {
			_, err := c.Apply(ctx, rs)
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			t.Logf("Apply: %v", err)
			if after := nftIn(t, ns, "list", "ruleset"); after != before {
				t.Errorf("ruleset changed after a failed Apply:\n%s", after)
			}
		})
	}
	// A ruleset our own checks refuse never reaches the kernel.
	bad := testRuleset("nfttest", 10)
	bad.Set("names13").Elements[1].Key = []byte("short")
	if _, err := c.Apply(ctx, bad); err == nil || !strings.Contains(err.Error(), `set "names13": element 1: key is 5 bytes`) {
		t.Errorf("Apply with a short key: %v", err)
	}
	if after := nftIn(t, ns, "list", "ruleset"); after != before {
		t.Errorf("ruleset changed after a refused Apply")
	}
}

func TestNSGenerationChanged(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)
	if _, err := c.Apply(ctx, testRuleset("nfttest", 100)); err != nil {
		t.Fatal(err)
	}
	before := nftIn(t, ns, "list", "table", "inet", "nfttest")

	// Someone adds a table between our generation read and our commit.
	c.beforeCommit = func() { nftIn(t, ns, "add", "table", "inet", "intruder") }
	_, err := c.Apply(ctx, testRuleset("nfttest", 200))
	if !errors.Is(err, ErrGenerationChanged) {
		t.Fatalf("Apply = %v, want ErrGenerationChanged", err)
	}
	t.Logf("Apply: %v", err)
	if after := nftIn(t, ns, "list", "table", "inet", "nfttest"); after != before {
		t.Errorf("our table changed:\n%s", after)
	}
	if _, err := nftInErr(ns, "list", "table", "inet", "intruder"); err != nil {
		t.Errorf("the concurrent change is gone: %v", err)
	}

	// Without interference the next Apply goes through, and reports the
	// generation it created.
	c.beforeCommit = nil
	stats, err := c.Apply(ctx, testRuleset("nfttest", 200))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := c.connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if g, err := getGen(nc); err != nil || g != stats.Generation {
		t.Errorf("kernel generation %d (%v), stats.Generation %d", g, err, stats.Generation)
	}
}

// TestNSLostAcks shrinks the receive buffer so that the kernel drops acks
// (ENOBUFS, DESIGN §5.3) and checks that Apply finds out what happened.
func TestNSLostAcks(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)
	c.testReadBuffer = 4096
	var unknown []error
	c.onUnknown = func(err error) { unknown = append(unknown, err) }
	stats, err := c.Apply(ctx, testRuleset("nfttest", 30000))
	if err != nil {
		t.Fatalf("Apply with lost acks: %v", err)
	}
	if len(unknown) != 1 || !errors.Is(unknown[0], unix.ENOBUFS) {
		t.Fatalf("outcomes re-checked: %v, want one ENOBUFS", unknown)
	}
	t.Logf("committed with a %d-message batch", stats.Messages)
	if got := nftJSONElements(t, ns, "nfttest")["big"]; got != 30000 {
		t.Errorf("big has %d elements", got)
	}
	// In place, the table keeps its handle: the apply id in the last rule
	// tells that the commit was ours.
	stats, err = c.Apply(ctx, changedRuleset("nfttest", 30000))
	if err != nil {
		t.Fatalf("in-place Apply with lost acks: %v", err)
	}
	if !stats.InPlace || len(unknown) != 2 || !errors.Is(unknown[1], unix.ENOBUFS) {
		t.Fatalf("InPlace %v, outcomes re-checked: %v, want a second ENOBUFS", stats.InPlace, unknown)
	}
	before := nftIn(t, ns, "list", "ruleset")
	_, err = c.Apply(ctx, badRulesets("nfttest")["duplicate element"])
	if err == nil {
		t.Fatal("Apply of a bad ruleset with lost acks succeeded")
	}
	t.Logf("Apply: %v", err)
	if after := nftIn(t, ns, "list", "ruleset"); after != before {
		t.Error("ruleset changed")
	}
}

// TestNSVerify checks that the verification notices missing elements, in
// small sets (read back) and big ones (chunk ends), interval sets included.
func TestNSVerify(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)

	// 64-byte ranges [K, K+1) as in the reversed-name design: 2 kernel
	// elements each.
	ranges := bigKeys(4000)
	for i := range ranges {
		end := bytes.Clone(ranges[i].Key)
		end[63] = 1
		ranges[i].KeyEnd = end
	}
	rs := testRuleset("nfttest", 8000)
	rs.Sets = append(rs.Sets, &rules.Set{
		Name: "ranges", KeyType: rules.TypeRaw, KeyLen: 64, Interval: true,
		Typeof:   []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 512}},
		Elements: ranges,
	})
	p := mustPlan(t, rs)
	if _, err := c.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}
	if err := c.verify(ctx, p); err != nil {
		t.Fatalf("verify after Apply: %v", err)
	}
	del := func(set, elem string) {
		nftIn(t, ns, "delete", "element", "inet", "nfttest", set, "{ "+elem+" }")
	}
	hexKey := func(b []byte) string { return "0x" + hex.EncodeToString(b) }

	// The last element of the first chunk of big.
	sp := p.sets[2]
	if sp.set.Name != "big" {
		t.Fatalf("set 2 is %s", sp.set.Name)
	}
	del("big", hexKey(sp.chunks[0].last.key))
	err := c.verify(ctx, p)
	if err == nil || !strings.Contains(err.Error(), `set "big": chunk 1 of`) {
		t.Errorf("verify = %v, want chunk 1 of big missing", err)
	}
	if _, err := c.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}

	// A whole range of the interval set, from the middle of a chunk's end.
	last := ranges[len(ranges)-1]
	del("ranges", hexKey(last.Key)+"-"+hexKey(last.Key[:63])+"00")
	err = c.verify(ctx, p)
	if err == nil || !strings.Contains(err.Error(), `set "ranges": chunk`) {
		t.Errorf("verify = %v, want a chunk of ranges missing", err)
	}
	if _, err := c.Apply(ctx, rs); err != nil {
		t.Fatal(err)
	}

	// A small set, read back.
	del("clients4", "203.0.113.0/25")
	err = c.verify(ctx, p)
	if err == nil || !strings.Contains(err.Error(), `set "clients4" holds 6 elements, 8 were sent`) {
		t.Errorf("verify = %v, want clients4 short of a range", err)
	}
}

// TestNSCounters sends a packet through the ruleset and reads the named
// counters.
func TestNSCounters(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)
	if _, err := c.Apply(ctx, testRuleset("nfttest", 10)); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", "198.18.0.1/32", "dev", "lo"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	// A UDP query for example.com from a client address: "passed" counts
	// it in prerouting, then "blocked" matches its name.
	query := append([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, wireName("example.com", 0)...)
	query = append(query, 0, 1, 0, 1)
	script := `printf '` + escapeBytes(query) + `' > /dev/udp/198.18.0.1/53`
	if out, err := exec.Command("ip", "netns", "exec", ns, "bash", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("send query: %v %s", err, out)
	}
	ctrs, err := c.Counters(ctx, "nfttest")
	if err != nil {
		t.Fatal(err)
	}
	if ctrs["passed"].Packets != 1 || ctrs["blocked"].Packets != 1 || ctrs["blocked"].Bytes == 0 {
		t.Errorf("counters %+v, want one packet each", ctrs)
	}
}

func escapeBytes(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		fmt.Fprintf(&s, "\\%03o", c)
	}
	return s.String()
}

func TestNSOpen(t *testing.T) {
	ns := newTestNS(t)
	ctx := ctxT(t)
	c := openNS(t, "/run/netns/"+ns)
	if _, err := c.Apply(ctx, testRuleset("bypath", 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := nftInErr(ns, "list", "table", "inet", "bypath"); err != nil {
		t.Errorf("Apply through the namespace path: %v", err)
	}
	if _, err := Open("nfttest-does-not-exist"); err == nil {
		t.Error("Open of a missing namespace succeeded")
	}
	// The current namespace: opened, never changed.
	cur, err := Open("")
	if err != nil {
		t.Fatal(err)
	}
	if err := cur.Close(); err != nil {
		t.Error(err)
	}
}

// TestNSScale applies big sets of 16-byte keys in one transaction. It is
// slow, so it runs only with NFTDNS_SCALE set (e.g. NFTDNS_SCALE=100000,1000000).
func TestNSScale(t *testing.T) {
	sizes := os.Getenv("NFTDNS_SCALE")
	if sizes == "" {
		t.Skip("skipping: set NFTDNS_SCALE=100000,1000000 to measure big applies")
	}
	for _, f := range strings.Split(sizes, ",") {
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil {
			t.Fatalf("NFTDNS_SCALE: %v", err)
		}
		t.Run(f, func(t *testing.T) {
			ns := newTestNS(t)
			c := openNS(t, ns)
			ctx := ctxT(t)
			keys := func(off int) *rules.Ruleset {
				els := make([]rules.Element, n)
				for i := range els {
					k := make([]byte, 16)
					binary.BigEndian.PutUint64(k[8:], uint64(i+off)*2654435761)
					binary.BigEndian.PutUint32(k[:4], uint32(i+off))
					els[i].Key = k
				}
				return &rules.Ruleset{Table: "scale", Sets: []*rules.Set{{
					Name: "s", KeyType: rules.TypeRaw, KeyLen: 16,
					Typeof:   []rules.Field{{Base: rules.BaseTransport, OffsetBits: 160, LenBits: 128}},
					Elements: els,
				}}, Chains: []*rules.Chain{{Name: "c", Rules: []rules.Rule{{Exprs: []rules.Expr{
					rules.Payload{Base: rules.BaseTransport, Offset: 20, Len: 16, Dst: 0},
					rules.Lookup{Set: "s", Src: 0},
					rules.Verdict{Kind: rules.Drop},
				}}}}}}
			}
			rs, other := keys(0), keys(n)
			start := time.Now()
			p := mustPlan(t, rs)
			build := time.Since(start)
			for _, step := range []struct {
				what    string
				rs      *rules.Ruleset
				replace bool
			}{
				{"create", rs, false},
				{"in place, same elements", rs, false},
				{"in place, other elements", other, false},
				{"in place, back", rs, false},
				{"replace (delete and re-create the table)", rs, true},
			} {
				c.forceReplace = step.replace
				stats, err := c.Apply(ctx, step.rs)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s, %d elements: %v (build alone %v), %d messages, %.1f MB", step.what, n, stats.Duration, build,
					stats.Messages, float64(stats.Bytes)/1e6)
			}
			start = time.Now()
			if err := c.verify(ctx, p); err != nil {
				t.Fatal(err)
			}
			t.Logf("verify alone: %v", time.Since(start))
			start = time.Now()
			if _, err := c.Flush(ctx, "scale"); err != nil {
				t.Fatal(err)
			}
			t.Logf("flush: %v", time.Since(start))
		})
	}
}
