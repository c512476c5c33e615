//go:build linux

package nft

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"nftdns/rules"
)

// nftHandles returns the kernel handles of inet <table> ("table"), its
// chains ("chain NAME") and its sets and maps ("set NAME"), from
// `nft -j -t list ruleset` (terse: without elements).
func nftHandles(t *testing.T, ns, table string) map[string]uint64 {
	t.Helper()
	var doc struct {
		Nftables []map[string]struct {
			Family string `json:"family"`
			Table  string `json:"table"`
			Name   string `json:"name"`
			Handle uint64 `json:"handle"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(nftIn(t, ns, "-j", "-t", "list", "ruleset")), &doc); err != nil {
		t.Fatalf("nft -j output does not parse: %v", err)
	}
	out := map[string]uint64{}
	for _, obj := range doc.Nftables {
		for kind, o := range obj {
			if o.Family != "inet" {
				continue
			}
			switch kind {
			case "table":
				if o.Name == table {
					out["table"] = o.Handle
				}
			case "chain", "set", "map", "counter":
				if o.Table == table {
					if kind == "map" {
						kind = "set"
					}
					out[kind+" "+o.Name] = o.Handle
				}
			}
		}
	}
	if _, ok := out["table"]; !ok {
		t.Fatalf("nft -j lists no table inet %s", table)
	}
	return out
}

// setupLoopback brings lo up in the namespace with addrs on it.
func setupLoopback(t *testing.T, ns string, addrs ...string) {
	t.Helper()
	cmds := [][]string{{"link", "set", "lo", "up"}}
	for _, a := range addrs {
		cmds = append(cmds, []string{"addr", "add", a, "dev", "lo"})
	}
	for _, args := range cmds {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
}

// sendQuery sends a DNS query for name over UDP to 198.18.0.1 inside the
// namespace; testRuleset counts it in "passed" (a client address) and, if
// the name is listed, in "blocked".
func sendQuery(t *testing.T, ns, name string) {
	t.Helper()
	query := append([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, wireName(name, 0)...)
	query = append(query, 0, 1, 0, 1)
	script := `printf '` + escapeBytes(query) + `' > /dev/udp/198.18.0.1/53`
	if out, err := exec.Command("ip", "netns", "exec", ns, "bash", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("send query: %v %s", err, out)
	}
}

// TestNSReapplyInPlace re-applies over an existing table and checks that
// the table and its base chains stay (their hooks are never unregistered),
// that everything else follows the new ruleset, and that named counters
// keep counting.
func TestNSReapplyInPlace(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)
	setupLoopback(t, ns, "198.18.0.1/32")

	const bigN = 3000
	if st, err := c.Apply(ctx, testRuleset("nfttest", bigN)); err != nil || st.InPlace {
		t.Fatalf("Apply = %+v, %v", st, err)
	}
	sendQuery(t, ns, "example.com")
	first := nftHandles(t, ns, "nfttest")

	// The same ruleset again: nothing is deleted or re-created.
	st, err := c.Apply(ctx, testRuleset("nfttest", bigN))
	if err != nil || !st.InPlace {
		t.Fatalf("re-Apply = %+v, %v", st, err)
	}
	if got := nftHandles(t, ns, "nfttest"); !maps.Equal(got, first) {
		t.Errorf("identical re-apply changed handles:\n%v\nwere:\n%v", got, first)
	}
	t.Logf("identical re-apply of %d elements in place: %v", st.Elements, st.Duration)

	// Other elements, a chain and a set gone, a set reshaped.
	rs := changedRuleset("nfttest", bigN)
	if _, err := c.Apply(ctx, rs); err != nil {
		t.Fatalf("re-Apply of the changed ruleset: %v", err)
	}
	now := nftHandles(t, ns, "nfttest")
	for name, h := range first {
		switch name {
		case "chain deeper", "set upstreams6":
			if _, ok := now[name]; ok {
				t.Errorf("%s is still there", name)
			}
		case "set names13":
			if now[name] == h {
				t.Errorf("%s kept handle %d although its key changed", name, h)
			}
		default: // the table, every base chain, kept sets and counters
			if now[name] != h {
				t.Errorf("%s has handle %d, was %d", name, now[name], h)
			}
		}
	}

	listing := nftIn(t, ns, "list", "ruleset")
	for _, want := range []string{"198.51.100.3 . 53", "198.51.100.4 . 5353", "typeof @th,160,96\n"} {
		if !strings.Contains(listing, want) {
			t.Errorf("nft list ruleset lacks %q", want)
		}
	}
	for _, gone := range []string{"198.51.100.1 ", "chain deeper", "upstreams6", "jump deeper"} {
		if strings.Contains(listing, gone) {
			t.Errorf("nft list ruleset still has %q", gone)
		}
	}
	for _, line := range strings.Split(listing, "\n") {
		if strings.Contains(line, "masquerade") && strings.TrimSpace(line) != "meta l4proto udp masquerade" {
			t.Errorf("the rule carrying the apply id lists as %q", line)
		}
	}
	names := nftIn(t, ns, "list", "set", "inet", "nfttest", "names13")
	// nft prints raw keys in hex without leading zeros.
	if !strings.Contains(names, "elements = { 0x76578616d706c6502636f00, 0x76578616d706c6502696f00 }") {
		t.Errorf("names13 does not hold exactly the new names:\n%s", names)
	}
	counts := nftJSONElements(t, ns, "nfttest")
	for _, s := range rs.Sets {
		if counts[s.Name] != len(s.Elements) {
			t.Errorf("set %s has %d elements, want %d", s.Name, counts[s.Name], len(s.Elements))
		}
	}
	big := nftIn(t, ns, "list", "set", "inet", "nfttest", "big")
	if strings.Contains(big, fmt.Sprintf("%x", []byte("blocked"))) || !strings.Contains(big, fmt.Sprintf("%x", []byte("changed"))) {
		t.Error("big does not hold exactly the new elements")
	}

	// The counters kept their values, and the new rules count on: a
	// query for a name of the reshaped set.
	ctrs, err := c.Counters(ctx, "nfttest")
	if err != nil {
		t.Fatal(err)
	}
	if ctrs["passed"].Packets != 1 || ctrs["blocked"].Packets != 1 {
		t.Errorf("counters after re-apply %+v, want one packet each", ctrs)
	}
	sendQuery(t, ns, "example.co")
	if ctrs, err = c.Counters(ctx, "nfttest"); err != nil || ctrs["passed"].Packets != 2 || ctrs["blocked"].Packets != 2 {
		t.Errorf("counters after a second query %+v (%v), want two packets each", ctrs, err)
	}

	// A re-apply the kernel refuses leaves everything as it was.
	before := nftIn(t, ns, "list", "ruleset")
	bad := changedRuleset("nfttest", bigN)
	bad.Chains[len(bad.Chains)-1].Rules = append(bad.Chains[len(bad.Chains)-1].Rules,
		rules.Rule{Text: "jump nowhere", Exprs: []rules.Expr{rules.Verdict{Kind: rules.Jump, Chain: "nowhere"}}})
	if _, err := c.Apply(ctx, bad); err == nil {
		t.Fatal("Apply with a jump to a missing chain succeeded")
	}
	if after := nftIn(t, ns, "list", "ruleset"); after != before {
		t.Errorf("ruleset changed after a refused re-apply:\n%s", after)
	}
	if got := nftHandles(t, ns, "nfttest"); !maps.Equal(got, now) {
		t.Errorf("handles changed after a refused re-apply:\n%v\nwere:\n%v", got, now)
	}

	// The generation guard covers the read of the existing table.
	c.beforeCommit = func() { nftIn(t, ns, "add", "table", "inet", "intruder") }
	if _, err := c.Apply(ctx, testRuleset("nfttest", bigN)); !errors.Is(err, ErrGenerationChanged) {
		t.Errorf("Apply with a concurrent change = %v, want ErrGenerationChanged", err)
	}
	c.beforeCommit = nil
	if after := nftIn(t, ns, "list", "table", "inet", "nfttest"); after != nftListTable(before, "nfttest") {
		t.Errorf("our table changed after a refused re-apply")
	}
}

// nftListTable cuts table inet <name> out of a `nft list ruleset` listing.
func nftListTable(listing, name string) string {
	start := strings.Index(listing, "table inet "+name+" {")
	if start < 0 {
		return ""
	}
	end := strings.Index(listing[start:], "\n}\n")
	if end < 0 {
		return listing[start:]
	}
	return listing[start : start+end+3]
}

// natRuleset DNATs UDP to 127.0.0.1:5300 to port 5301 in a nat output
// chain, and has a set whose elements change with round, so that every
// apply is a real change.
func natRuleset(table string, round int) *rules.Ruleset {
	port := func(p uint16) []byte { return []byte{byte(p >> 8), byte(p)} }
	return &rules.Ruleset{
		Table: table,
		Sets: []*rules.Set{
			{Name: "to", KeyType: rules.TypeInteger, KeyLen: 4, DataType: rules.TypeIPv4AddrPort, DataLen: 8,
				Elements: []rules.Element{{Key: hostU32(0), Data: addrPort(addr4("127.0.0.1"), 5301)}}},
			{Name: "round", KeyType: rules.TypeIPv4Addr, KeyLen: 4,
				Elements: []rules.Element{{Key: addr4(fmt.Sprintf("192.0.2.%d", round%250+1))}}},
		},
		Chains: []*rules.Chain{
			{Name: "in", Hook: rules.HookInput, Type: rules.ChainFilter, Rules: []rules.Rule{{
				Text: "ip saddr @round drop",
				Exprs: []rules.Expr{
					rules.Meta{Key: rules.MetaNFProto, Dst: 0},
					rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{2}},
					rules.Payload{Base: rules.BaseNetwork, Offset: 12, Len: 4, Dst: 0},
					rules.Lookup{Set: "round", Src: 0},
					rules.Verdict{Kind: rules.Drop},
				},
			}}},
			{Name: "nat-out", Hook: rules.HookOutput, Type: rules.ChainNAT, Priority: -100, Rules: []rules.Rule{{
				Text: "ip udp dport 5300 dnat ip to numgen inc mod 1 map @to",
				Exprs: []rules.Expr{
					rules.Meta{Key: rules.MetaNFProto, Dst: 0},
					rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{2}},
					rules.Meta{Key: rules.MetaL4Proto, Dst: 0},
					rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{17}},
					rules.Payload{Base: rules.BaseTransport, Offset: 2, Len: 2, Dst: 0},
					rules.Cmp{Op: rules.CmpEq, Src: 0, Data: port(5300)},
					rules.Numgen{Dst: 0, Modulus: 1},
					rules.Lookup{Set: "to", Src: 0, Dst: 0, IsMap: true},
					rules.NAT{Kind: rules.DNAT, Family: rules.IPv4, Addr: 0, Proto: 1, HasProto: true},
				},
			}}},
		},
	}
}

// inNS runs fn on a thread in the namespace and waits for it; sockets fn
// opens stay in the namespace.
func inNS(ns string, fn func()) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		fn()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and dies with the goroutine.
			done <- fmt.Errorf("back to the original namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	return <-done
}

// TestNSReapplyKeepsNATHooks re-applies while a client opens new UDP flows
// through a nat DNAT rule. Re-creating the nat base chain unregisters its
// hook for a moment, and a flow whose first packet passes then gets a null
// NAT binding and reaches the original port instead; in place, the hook
// stays and every flow is DNATed. (The end-to-end version is
// integration/ops_test.go TestReapplyUnderLoad.)
func TestNSReapplyKeepsNATHooks(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)
	setupLoopback(t, ns)
	c.forceReplace = os.Getenv("NFTDNS_FORCE_REPLACE") != ""
	if _, err := c.Apply(ctx, natRuleset("nfttest", 0)); err != nil {
		t.Fatal(err)
	}

	var target, trap *net.UDPConn
	var lerr error
	err := inNS(ns, func() {
		if target, lerr = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5301}); lerr != nil {
			return
		}
		trap, lerr = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5300})
	})
	if err = errors.Join(err, lerr); err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	defer trap.Close()
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for name, conn := range map[string]*net.UDPConn{"dnat": target, "trap": trap} {
		_ = conn.SetReadBuffer(8 << 20)
		wg.Go(func() {
			buf := make([]byte, 64)
			for {
				if _, _, err := conn.ReadFromUDP(buf); err != nil {
					return
				}
				mu.Lock()
				got[name]++
				mu.Unlock()
			}
		})
	}

	// Each flow is a new socket, so a new source port and a new conntrack
	// entry whose first packet meets the nat hook. The flows are capped:
	// conntrack's table is shared with the host.
	const maxFlows = 40000
	loadCtx, stop := context.WithCancel(ctx)
	sent := 0
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		err := inNS(ns, func() {
			dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5300}
			for sent < maxFlows && loadCtx.Err() == nil {
				conn, err := net.DialUDP("udp4", nil, dst)
				if err != nil {
					t.Errorf("flow %d: %v", sent, err)
					return
				}
				_, err = conn.Write([]byte("x"))
				conn.Close()
				if err != nil {
					t.Errorf("flow %d: %v", sent, err)
					return
				}
				sent++
			}
		})
		if err != nil {
			t.Error(err)
		}
	}()
	applies := 0
	var total time.Duration
	for i := 1; i <= 300; i++ {
		st, err := c.Apply(ctx, natRuleset("nfttest", i))
		if err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
		if !st.InPlace && !c.forceReplace {
			t.Fatalf("apply %d not in place", i)
		}
		applies++
		total += st.Duration
	}
	stop()
	<-loadDone
	time.Sleep(200 * time.Millisecond)
	_ = target.Close()
	_ = trap.Close()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d applies (mean %v) during %d new flows: %d DNATed, %d reached the original port",
		applies, total/time.Duration(applies), sent, got["dnat"], got["trap"])
	if got["trap"] != 0 || got["dnat"] != sent {
		t.Errorf("%d of %d flows were not DNATed (%d reached the original port)", sent-got["dnat"], sent, got["trap"])
	}
	if sent < applies {
		t.Errorf("only %d flows during %d applies: too little load to mean anything", sent, applies)
	}
}
