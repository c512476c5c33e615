//go:build linux

package nft

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"nftdns/rules"
)

// clientNATRuleset is the shape of nftdns's NAT path: UDP from a client
// network (an interval set with an open-ended top range) to a listen
// address on port 5300 is DNATed to numgen inc mod len(upstreams) map
// @rr4. "round" changes with round, so that every apply changes
// something; upstreams are the ports rr4 maps to, on 198.18.1.1.
func clientNATRuleset(table string, round int, upstreams ...uint16) *rules.Ruleset {
	clients := []rules.Element{
		{Key: addr4("10.0.0.0"), KeyEnd: addr4("10.1.0.0")},
		{Key: addr4("198.18.1.0"), KeyEnd: addr4("198.18.2.0")},
		{Key: addr4("240.0.0.0")}, // to the end of the address space
	}
	for i := range raceExtraRanges {
		// /24s in 11.0.0.0/8 and up, for a bigger rbtree.
		clients = append(clients, rules.Element{
			Key: []byte{byte(11 + i/256), byte(i % 256), 0, 0}, KeyEnd: []byte{byte(11 + i/256), byte(i % 256), 1, 0}})
	}
	rr := make([]rules.Element, len(upstreams))
	for i, p := range upstreams {
		rr[i] = rules.Element{Key: hostU32(uint32(i)), Data: addrPort(addr4("198.18.1.1"), p)}
	}
	return &rules.Ruleset{
		Table: table,
		Sets: []*rules.Set{
			{Name: "clients4", KeyType: rules.TypeIPv4Addr, KeyLen: 4, Interval: true, Elements: clients},
			{Name: "listen4", KeyType: rules.TypeIPv4Addr, KeyLen: 4, Elements: []rules.Element{{Key: addr4("198.18.1.1")}}},
			{Name: "rr4", KeyType: rules.TypeInteger, KeyLen: 4, DataType: rules.TypeIPv4AddrPort, DataLen: 8, Elements: rr},
			{Name: "round", KeyType: rules.TypeIPv4Addr, KeyLen: 4,
				Elements: []rules.Element{{Key: addr4("192.0.2." + itoa(round%250+1))}}},
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
				Text: "ip saddr @clients4 ip daddr @listen4 udp dport 5300 dnat ip to numgen inc mod N map @rr4",
				Exprs: []rules.Expr{
					rules.Meta{Key: rules.MetaNFProto, Dst: 0},
					rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{2}},
					rules.Meta{Key: rules.MetaL4Proto, Dst: 0},
					rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{17}},
					rules.Payload{Base: rules.BaseNetwork, Offset: 12, Len: 4, Dst: 0},
					rules.Lookup{Set: "clients4", Src: 0},
					rules.Payload{Base: rules.BaseNetwork, Offset: 16, Len: 4, Dst: 0},
					rules.Lookup{Set: "listen4", Src: 0},
					rules.Payload{Base: rules.BaseTransport, Offset: 2, Len: 2, Dst: 0},
					rules.Cmp{Op: rules.CmpEq, Src: 0, Data: []byte{5300 >> 8, 5300 & 0xff}},
					rules.Numgen{Dst: 0, Modulus: uint32(len(upstreams))},
					rules.Lookup{Set: "rr4", Src: 0, Dst: 0, IsMap: true},
					rules.NAT{Kind: rules.DNAT, Family: rules.IPv4, Addr: 0, Proto: 1, HasProto: true},
				},
			}}},
		},
	}
}

// raceExtraRanges adds ranges to clients4 (NFTDNS_RACE_RANGES, for
// TestNSSetFlushRace: a bigger interval tree to flush and refill).
var raceExtraRanges, _ = strconv.Atoi(os.Getenv("NFTDNS_RACE_RANGES"))

func itoa(i int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		if i /= 10; i == 0 {
			return string(b)
		}
	}
}

// setsTouched lists the sets a plan sends element messages for.
func setsTouched(p *plan) map[string]int {
	out := map[string]int{}
	for _, m := range p.msgs {
		typ := m.msg.Header.Type
		if typ != msgType(unix.NFT_MSG_NEWSETELEM) && typ != msgType(unix.NFT_MSG_DELSETELEM) {
			continue
		}
		out[str(attrsOf(netlink.Message{Data: m.msg.Data})[unix.NFTA_SET_ELEM_LIST_SET])]++
	}
	return out
}

// TestNSReapplySmallSetsUntouched: an identical in-place re-apply sends no
// element messages for the small sets and leaves them as they were; a
// change of upstreams reaches rr4 as its difference.
func TestNSReapplySmallSetsUntouched(t *testing.T) {
	ns := newTestNS(t)
	c := openNS(t, ns)
	ctx := ctxT(t)
	var last *plan
	c.onPlan = func(p *plan) { last = p }
	if _, err := c.Apply(ctx, clientNATRuleset("nfttest", 0, 5301, 5302)); err != nil {
		t.Fatal(err)
	}
	list := func(set string) string {
		kind := "set"
		if set == "rr4" {
			kind = "map"
		}
		return nftIn(t, ns, "list", kind, "inet", "nfttest", set)
	}
	sets := []string{"clients4", "listen4", "rr4", "round"}
	before := map[string]string{}
	for _, s := range sets {
		before[s] = list(s)
	}
	h0 := nftHandles(t, ns, "nfttest")
	st, err := c.Apply(ctx, clientNATRuleset("nfttest", 0, 5301, 5302))
	if err != nil {
		t.Fatal(err)
	}
	if !st.InPlace {
		t.Fatal("re-apply not in place")
	}
	if got := setsTouched(last); len(got) > 0 {
		t.Errorf("identical re-apply sends element messages for %v", got)
	}
	for _, s := range sets {
		if after := list(s); after != before[s] {
			t.Errorf("set %s changed:\n%s\nwas:\n%s", s, after, before[s])
		}
	}
	if h := nftHandles(t, ns, "nfttest"); !equalMaps(h, h0) {
		t.Errorf("handles changed: %v, were %v", h, h0)
	}
	if !strings.Contains(before["clients4"], "240.0.0.0/4") {
		t.Errorf("clients4 lacks the open-ended range:\n%s", before["clients4"])
	}

	// New upstreams: rr4 gets its difference, the rest stays.
	if _, err := c.Apply(ctx, clientNATRuleset("nfttest", 0, 5301, 5303, 5304)); err != nil {
		t.Fatal(err)
	}
	if got := setsTouched(last); len(got) != 1 || got["rr4"] == 0 {
		t.Errorf("upstream change sends element messages for %v, want rr4 only", got)
	}
	rr := list("rr4")
	for _, want := range []string{"0 : 198.18.1.1 . 5301", "1 : 198.18.1.1 . 5303", "2 : 198.18.1.1 . 5304"} {
		if !strings.Contains(rr, want) {
			t.Errorf("rr4 lacks %q:\n%s", want, rr)
		}
	}
	if strings.Contains(rr, "5302") {
		t.Errorf("rr4 still holds 5302:\n%s", rr)
	}
	for _, s := range []string{"clients4", "listen4", "round"} {
		if after := list(s); after != before[s] {
			t.Errorf("set %s changed:\n%s\nwas:\n%s", s, after, before[s])
		}
	}
	// A changed round set: updated by its difference, still one element.
	if _, err := c.Apply(ctx, clientNATRuleset("nfttest", 1, 5301, 5303, 5304)); err != nil {
		t.Fatal(err)
	}
	if got := setsTouched(last); len(got) != 1 || got["round"] != 2 {
		t.Errorf("round change sends element messages %v, want round: 2 (delete, add)", got)
	}
	if r := list("round"); !strings.Contains(r, "192.0.2.2") || strings.Contains(r, "192.0.2.1 ") {
		t.Errorf("round:\n%s", r)
	}
}

func equalMaps(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestNSSetFlushRace tries to provoke the suspected race directly: new UDP
// flows from 198.18.1.2 meet "ip saddr @clients4 ... dnat" while in-place
// re-applies run in a tight loop, once flushing and refilling every kept
// set (the old behaviour) and once leaving unchanged sets alone. A flow
// that is not DNATed reaches a trap listener on the original port. Only
// the new behaviour is asserted; the old one's count is logged.
func TestNSSetFlushRace(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	for _, mode := range []struct {
		name     string
		flushAll bool
	}{{"flush-all-sets", true}, {"diff-sets", false}} {
		t.Run(mode.name, func(t *testing.T) {
			ns := newTestNS(t)
			c := openNS(t, ns)
			ctx := ctxT(t)
			setupLoopback(t, ns, "198.18.1.1/32", "198.18.1.2/32")
			c.flushAllSets = mode.flushAll
			var last *plan
			c.onPlan = func(p *plan) { last = p }
			if _, err := c.Apply(ctx, clientNATRuleset("nfttest", 0, 5301)); err != nil {
				t.Fatal(err)
			}
			trapped, dnated, sent, applies, touched := runFlushRace(t, ctx, ns, c, &last)
			t.Logf("%s: %d in-place applies (clients4 touched by %d of them) during %d new flows: %d DNATed, %d reached the original port",
				mode.name, applies, touched, sent, dnated, trapped)
			if mode.flushAll && touched != applies {
				t.Errorf("flush-all mode touched clients4 in %d of %d applies", touched, applies)
			}
			if !mode.flushAll {
				if touched != 0 {
					t.Errorf("clients4 touched by %d applies", touched)
				}
				if trapped != 0 || dnated != sent {
					t.Errorf("%d of %d flows not DNATed (%d reached the original port)", sent-dnated, sent, trapped)
				}
			}
		})
	}
}

func runFlushRace(t *testing.T, ctx context.Context, ns string, c *Conn, last **plan) (trapped, dnated, sent, applies, touched int) {
	var target, trap *net.UDPConn
	var lerr error
	err := inNS(ns, func() {
		if target, lerr = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 18, 1, 1), Port: 5301}); lerr != nil {
			return
		}
		trap, lerr = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 18, 1, 1), Port: 5300})
	})
	if err = errors.Join(err, lerr); err != nil {
		t.Fatal(err)
	}
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
	const maxFlows = 40000
	loadCtx, stop := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		err := inNS(ns, func() {
			src := &net.UDPAddr{IP: net.IPv4(198, 18, 1, 2)}
			dst := &net.UDPAddr{IP: net.IPv4(198, 18, 1, 1), Port: 5300}
			for sent < maxFlows && loadCtx.Err() == nil {
				conn, err := net.DialUDP("udp4", src, dst)
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
	deadline := time.Now().Add(10 * time.Second)
	for i := 1; i <= 400 && time.Now().Before(deadline); i++ {
		// Identical re-applies: only rules are replaced, and, in the old
		// behaviour, every set flushed and refilled.
		st, err := c.Apply(ctx, clientNATRuleset("nfttest", 0, 5301))
		if err != nil {
			stop()
			<-loadDone
			t.Fatalf("apply %d: %v", i, err)
		}
		if !st.InPlace {
			t.Fatalf("apply %d not in place", i)
		}
		applies++
		if setsTouched(*last)["clients4"] > 0 {
			touched++
		}
	}
	stop()
	<-loadDone
	time.Sleep(200 * time.Millisecond)
	_ = target.Close()
	_ = trap.Close()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return got["trap"], got["dnat"], sent, applies, touched
}
