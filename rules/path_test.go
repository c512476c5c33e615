package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// pathState extends the sim (sim_test.go) from the query chains to whole
// packets through the base chains: IP header, transport header and payload,
// conntrack status, numgen, NAT. With it a test follows the first packet of
// a flow through raw prerouting, nat prerouting, the routing decision,
// forward and nat postrouting, as the kernel would.
type pathState struct {
	nfproto    byte // 2 (IPv4) or 10 (IPv6)
	l4         byte
	nh, th, ih []byte
	ctStatus   uint32
	numgen     uint32 // one counter for all numgen expressions (the kernel has one each): a test of the order sends one kind of flow
	counters   map[string]int
	dnat       netip.AddrPort // set by a DNAT
	masq       bool
}

// expr evaluates the expressions the query-only sim does not model (or
// models for the transport base only). handled says it did; match false
// ends the rule; accept ends the chain with accept (a NAT statement's
// verdict). Counters are recorded but left to the sim too.
func (p *pathState) expr(s *sim, e Expr, regs *[64]byte) (handled, match, accept bool, err error) {
	switch e := e.(type) {
	case Payload:
		b := map[Base][]byte{BaseNetwork: p.nh, BaseTransport: p.th, BaseInner: p.ih}[e.Base]
		end := int(e.Offset + e.Len)
		if end > len(b) {
			return true, false, false, nil // NFT_BREAK
		}
		d := int(e.Dst) * 4
		clear(regs[d+int(e.Len)/4*4 : min(64, d+int(e.Len)/4*4+4)])
		copy(regs[d:], b[e.Offset:end])
		return true, true, false, nil
	case Meta:
		v := map[MetaKey]byte{MetaNFProto: p.nfproto, MetaL4Proto: p.l4}[e.Key]
		copy(regs[int(e.Dst)*4:], []byte{v, 0, 0, 0})
		return true, true, false, nil
	case Ct:
		if e.Key != CtStatus {
			return true, false, false, fmt.Errorf("path sim: ct key %d", e.Key)
		}
		binary.LittleEndian.PutUint32(regs[int(e.Dst)*4:], p.ctStatus)
		return true, true, false, nil
	case Numgen:
		binary.LittleEndian.PutUint32(regs[int(e.Dst)*4:], p.numgen%e.Modulus)
		p.numgen++
		return true, true, false, nil
	case Lookup:
		set := s.rs.Set(e.Set)
		key := regs[int(e.Src)*4 : int(e.Src)*4+int(set.KeyLen)]
		switch {
		case set.Interval:
			hit := false
			for _, el := range set.Elements {
				hit = hit || string(key) >= string(el.Key) && (el.KeyEnd == nil || string(key) < string(el.KeyEnd))
			}
			return true, hit != e.Invert, false, nil
		case set.IsMap() && set.DataType != TypeVerdict:
			el := s.sets[e.Set][string(key)]
			if el == nil {
				return true, false, false, nil
			}
			copy(regs[int(e.Dst)*4:], el.Data)
			return true, true, false, nil
		}
		return false, false, false, nil
	case NAT:
		n := 4
		if e.Family == IPv6 {
			n = 16
		}
		a, _ := netip.AddrFromSlice(regs[int(e.Addr)*4 : int(e.Addr)*4+n])
		p.dnat = netip.AddrPortFrom(a, binary.BigEndian.Uint16(regs[int(e.Proto)*4:]))
		p.ctStatus |= 1 << 5 // IPS_DST_NAT
		return true, true, true, nil
	case Masquerade:
		p.masq = true
		return true, true, true, nil
	case Counter:
		p.counters[e.Name]++
	}
	return false, false, false, nil
}

// packet is the first packet of a flow arriving at the box.
type packet struct {
	src, dst netip.Addr
	proto    string // "udp" or "tcp"
	dport    uint16
	dns      []byte // DNS message; nil for a TCP SYN
}

// pathResult is what became of a packet.
type pathResult struct {
	fate     string // "blocked", "malformed" (dropped in raw), "forward-dropped", "local", "forwarded"
	to       netip.AddrPort
	masq     bool
	counters map[string]int
}

// boxLocal are the box's addresses in the path tests besides the listen
// addresses (its upstream-side address).
var boxLocal = []netip.Addr{netip.MustParseAddr("198.18.2.1"), netip.MustParseAddr("2001:db8:2::1")}

// follow runs p through the box: raw prerouting, nat prerouting (a new
// flow), routing, then forward and nat postrouting for forwarded packets.
func follow(t *testing.T, s *sim, p packet) pathResult {
	t.Helper()
	ps := &pathState{nfproto: 2, counters: map[string]int{}}
	if p.dst.Is6() {
		ps.nfproto = 10
	}
	ps.l4 = map[string]byte{"udp": 17, "tcp": 6}[p.proto]
	if p.dst.Is4() {
		ps.nh = make([]byte, 20)
		copy(ps.nh[12:], p.src.AsSlice())
		copy(ps.nh[16:], p.dst.AsSlice())
	} else {
		ps.nh = make([]byte, 40)
		copy(ps.nh[8:], p.src.AsSlice())
		copy(ps.nh[24:], p.dst.AsSlice())
	}
	if p.proto == "udp" {
		ps.th = binary.BigEndian.AppendUint16(nil, 40000)
		ps.th = binary.BigEndian.AppendUint16(ps.th, p.dport)
		ps.th = binary.BigEndian.AppendUint16(ps.th, uint16(8+len(p.dns)))
		ps.th = append(ps.th, 0, 0)
		ps.th = append(ps.th, p.dns...)
		ps.ih = ps.th[8:]
	} else {
		ps.th = make([]byte, 20)
		binary.BigEndian.PutUint16(ps.th, 40000)
		binary.BigEndian.PutUint16(ps.th[2:], p.dport)
		if p.dns != nil {
			ps.ih = append(binary.BigEndian.AppendUint16(nil, uint16(len(p.dns))), p.dns...)
		}
		ps.th = append(ps.th, ps.ih...)
	}
	if s.path != nil {
		ps.numgen = s.path.numgen // the round robin goes on across flows
	}
	s.path = ps
	res := pathResult{counters: ps.counters}
	run := func(chain string) string {
		v, err := s.chain(chain, nil, 0)
		if err != nil {
			t.Fatalf("%s: %v", chain, err)
		}
		return v
	}
	if v := run(chainPreroutingRaw); v != outPass {
		res.fate = v
		return res
	}
	if run(chainNATPrerouting) != outPass {
		t.Fatal("nat-prerouting dropped")
	}
	dst := netip.AddrPortFrom(p.dst, p.dport)
	if ps.dnat.IsValid() {
		dst = ps.dnat
		off := map[bool]int{true: 16, false: 24}[dst.Addr().Is4()]
		copy(ps.nh[off:], dst.Addr().AsSlice())
		binary.BigEndian.PutUint16(ps.th[2:], dst.Port())
	}
	res.to = dst
	if slices.Contains(append(slices.Clone(boxLocal), s.rs.allListen()...), dst.Addr()) {
		res.fate = "local"
		return res
	}
	if run(chainForward) != outPass {
		res.fate = "forward-dropped"
		return res
	}
	run(chainNATPost)
	res.fate, res.masq = "forwarded", ps.masq
	return res
}

// allListen returns the addresses in the listen sets.
func (rs *Ruleset) allListen() []netip.Addr {
	var out []netip.Addr
	for _, n := range []string{"listen4", "listen6"} {
		for _, e := range rs.Set(n).Elements {
			a, _ := netip.AddrFromSlice(e.Key)
			out = append(out, a)
		}
	}
	return out
}

var (
	pathClient4   = netip.MustParseAddr("198.18.1.2")
	pathClient6   = netip.MustParseAddr("2001:db8:1::2")
	pathOutsider4 = netip.MustParseAddr("198.18.3.2")
	pathOutsider6 = netip.MustParseAddr("2001:db8:3::2")
	pathPublic4   = netip.MustParseAddr("203.0.113.53")
	pathPublic6   = netip.MustParseAddr("2001:db8:53::53")
	pathListen4   = netip.MustParseAddr("198.18.1.1")
	pathListen6   = netip.MustParseAddr("2001:db8:1::1")
	// an upstream inside the client network: its own queries must not be
	// intercepted
	pathUpInClients = netip.MustParseAddr("198.18.1.53")
)

func pathSettings(intercept, dot bool) Settings {
	return Settings{
		Listen: []netip.Addr{pathListen4, pathListen6},
		Upstreams: []netip.AddrPort{
			netip.MustParseAddrPort("198.18.2.11:53"), netip.MustParseAddrPort("198.18.2.12:53"),
			netip.AddrPortFrom(pathUpInClients, 53),
			netip.MustParseAddrPort("[2001:db8:2::11]:53"), netip.MustParseAddrPort("[2001:db8:2::12]:5353"),
		},
		Clients:   []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24"), netip.MustParsePrefix("2001:db8:1::/64")},
		Intercept: intercept,
		BlockDoT:  dot,
	}
}

func pathSim(t *testing.T, s Settings) *sim {
	t.Helper()
	rs, err := Compile(s, []*List{{Path: "t.list", Names: map[string]int{"blocked.example": 1}}})
	if err != nil {
		t.Fatal(err)
	}
	return newSim(rs)
}

func query(name string, flags uint16) []byte {
	msg := dnsQuery(wireOf(name))
	binary.BigEndian.PutUint16(msg[2:], flags)
	return msg
}

func wireOf(name string) []byte { return appendWire(nil, name) }

// TestPathInterceptAndDoT follows first packets through the compiled base
// chains: where each ends up (dropped in raw, dropped in forward, delivered
// locally, forwarded, and to where after NAT) and which counters moved.
func TestPathInterceptAndDoT(t *testing.T) {
	t.Parallel()
	allowed, blocked := query("allowed.example", 0x0100), query("blocked.example", 0x0100)
	answer := query("allowed.example", 0x8180) // QR=1: fails the header gate
	cases := []struct {
		name           string
		intercept, dot bool
		v4only         bool // settings without IPv6 upstreams and listen address
		noListen6      bool // IPv6 upstreams but no IPv6 listen address
		p              packet
		fate           string
		dnat           bool     // the destination was rewritten to an upstream
		counters       []string // each moved by one
		quiet          []string // counter prefixes that must not move
	}{
		{name: "intercept/udp4", intercept: true, p: packet{pathClient4, pathPublic4, "udp", 53, allowed},
			fate: "forwarded", dnat: true, counters: []string{"checked_ipv4_udp", "passed_ipv4_udp", "intercepted_ipv4_udp"}},
		{name: "intercept/tcp4-syn", intercept: true, p: packet{pathClient4, pathPublic4, "tcp", 53, nil},
			fate: "forwarded", dnat: true, counters: []string{"intercepted_ipv4_tcp"}, quiet: []string{"checked"}},
		{name: "intercept/udp6", intercept: true, p: packet{pathClient6, pathPublic6, "udp", 53, allowed},
			fate: "forwarded", dnat: true, counters: []string{"checked_ipv6_udp", "intercepted_ipv6_udp"}},
		{name: "intercept/tcp6-syn", intercept: true, p: packet{pathClient6, pathPublic6, "tcp", 53, nil},
			fate: "forwarded", dnat: true, counters: []string{"intercepted_ipv6_tcp"}},
		{name: "intercept/blocked-udp4", intercept: true, p: packet{pathClient4, pathPublic4, "udp", 53, blocked},
			fate: outBlocked, counters: []string{"checked_ipv4_udp", "blocked_ipv4_udp"}, quiet: []string{"intercepted", "passed"}},
		{name: "intercept/blocked-tcp6-data", intercept: true, p: packet{pathClient6, pathPublic6, "tcp", 53, blocked},
			fate: outBlocked, counters: []string{"checked_ipv6_tcp", "blocked_ipv6_tcp"}},
		{name: "intercept/malformed-udp4", intercept: true, p: packet{pathClient4, pathPublic4, "udp", 53, answer},
			fate: outMalformed, counters: []string{"malformed"}, quiet: []string{"intercepted"}},
		{name: "intercept/to-listen-not-counted", intercept: true, p: packet{pathClient4, pathListen4, "udp", 53, allowed},
			fate: "forwarded", dnat: true, quiet: []string{"intercepted"}},
		{name: "intercept/to-an-upstream", intercept: true, p: packet{pathClient4, netip.MustParseAddr("198.18.2.12"), "udp", 53, allowed},
			fate: "forwarded", dnat: true, counters: []string{"intercepted_ipv4_udp"}},
		{name: "intercept/to-box-other-address", intercept: true, p: packet{pathClient6, boxLocal[1], "udp", 53, allowed},
			fate: "forwarded", dnat: true, counters: []string{"intercepted_ipv6_udp"}},
		{name: "intercept/outsider-not-intercepted", intercept: true, p: packet{pathOutsider4, pathPublic4, "udp", 53, allowed},
			fate: "forwarded", quiet: []string{"intercepted", "checked", "outsider"}},
		{name: "intercept/outsider6-not-intercepted", intercept: true, p: packet{pathOutsider6, pathPublic6, "tcp", 53, nil},
			fate: "forwarded", quiet: []string{"intercepted"}},
		{name: "intercept/upstream-in-client-net-no-loop", intercept: true, p: packet{pathUpInClients, pathPublic4, "udp", 53, allowed},
			fate: "forward-dropped", counters: []string{"forward_dropped"}, quiet: []string{"intercepted"}},
		{name: "intercept/other-port", intercept: true, p: packet{pathClient4, pathPublic4, "udp", 5353, allowed},
			fate: "forward-dropped", counters: []string{"forward_dropped"}, quiet: []string{"intercepted", "checked"}},
		{name: "intercept/no-v6-upstream", intercept: true, v4only: true, p: packet{pathClient6, pathPublic6, "udp", 53, allowed},
			fate: "forward-dropped", counters: []string{"checked_ipv6_udp", "forward_dropped"}, quiet: []string{"intercepted"}},
		{name: "intercept/v4-still-with-no-v6-upstream", intercept: true, v4only: true, p: packet{pathClient4, pathPublic4, "udp", 53, allowed},
			fate: "forwarded", dnat: true, counters: []string{"intercepted_ipv4_udp"}},
		{name: "intercept/v6-without-v6-listen", intercept: true, noListen6: true, p: packet{pathClient6, pathPublic6, "tcp", 53, nil},
			fate: "forwarded", dnat: true, counters: []string{"intercepted_ipv6_tcp"}},
		{name: "no-intercept/v6-without-v6-listen", noListen6: true, p: packet{pathClient6, pathPublic6, "udp", 53, allowed},
			fate: "forward-dropped", counters: []string{"forward_dropped"}},
		{name: "no-intercept/udp4", p: packet{pathClient4, pathPublic4, "udp", 53, allowed},
			fate: "forward-dropped", counters: []string{"checked_ipv4_udp", "forward_dropped"}},
		{name: "no-intercept/tcp6-syn", p: packet{pathClient6, pathPublic6, "tcp", 53, nil},
			fate: "forward-dropped", counters: []string{"forward_dropped"}},
		{name: "no-intercept/blocked-still-blocked", p: packet{pathClient4, pathPublic4, "udp", 53, blocked},
			fate: outBlocked, counters: []string{"blocked_ipv4_udp"}},
		{name: "no-intercept/to-listen", p: packet{pathClient6, pathListen6, "udp", 53, allowed},
			fate: "forwarded", dnat: true},

		{name: "dot/tcp4-forwarded", dot: true, p: packet{pathClient4, pathPublic4, "tcp", 853, nil},
			fate: outMalformed, counters: []string{"dot_blocked_ipv4_tcp"}, quiet: []string{"forward_dropped"}},
		{name: "dot/udp4-to-box", dot: true, p: packet{pathClient4, pathListen4, "udp", 853, []byte("x")},
			fate: outMalformed, counters: []string{"dot_blocked_ipv4_udp"}},
		{name: "dot/tcp6-to-box", dot: true, p: packet{pathClient6, boxLocal[1], "tcp", 853, nil},
			fate: outMalformed, counters: []string{"dot_blocked_ipv6_tcp"}},
		{name: "dot/udp6-forwarded", dot: true, intercept: true, p: packet{pathClient6, pathPublic6, "udp", 853, []byte("x")},
			fate: outMalformed, counters: []string{"dot_blocked_ipv6_udp"}},
		{name: "dot/outsider-untouched", dot: true, p: packet{pathOutsider4, pathPublic4, "tcp", 853, nil},
			fate: "forwarded", quiet: []string{"dot_blocked"}},
		{name: "dot/dns-untouched", dot: true, p: packet{pathClient4, pathListen4, "udp", 53, allowed},
			fate: "forwarded", dnat: true, quiet: []string{"dot_blocked"}},
		{name: "no-dot/tcp4-forward-policy", p: packet{pathClient4, pathPublic4, "tcp", 853, nil},
			fate: "forward-dropped", counters: []string{"forward_dropped"}},
		{name: "no-dot/udp4-to-box", p: packet{pathClient4, pathListen4, "udp", 853, []byte("x")},
			fate: "local"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := pathSettings(tc.intercept, tc.dot)
			if tc.v4only {
				st.Listen = st.Listen[:1]
				st.Upstreams = st.Upstreams[:3]
			}
			if tc.noListen6 {
				st.Listen = st.Listen[:1]
			}
			s := pathSim(t, st)
			r := follow(t, s, tc.p)
			if r.fate != tc.fate {
				t.Errorf("fate %q, want %q (counters %v)", r.fate, tc.fate, r.counters)
			}
			ups := map[netip.AddrPort]bool{}
			for _, u := range st.Upstreams {
				ups[u] = true
			}
			if got := ups[r.to]; got != tc.dnat && tc.fate != outBlocked && tc.fate != outMalformed {
				t.Errorf("sent to %v: DNATed to an upstream = %v, want %v", r.to, got, tc.dnat)
			}
			if tc.dnat && !r.masq {
				t.Errorf("DNATed flow to %v not masqueraded", r.to)
			}
			for _, c := range tc.counters {
				if r.counters[c] != 1 {
					t.Errorf("counter %s moved by %d, want 1 (all: %v)", c, r.counters[c], r.counters)
				}
				if !slices.Contains(s.rs.Counters, c) {
					t.Errorf("counter %s is not declared in the table", c)
				}
			}
			for _, q := range tc.quiet {
				for c, n := range r.counters {
					if strings.HasPrefix(c, q) && n != 0 {
						t.Errorf("counter %s moved by %d, want 0", c, n)
					}
				}
			}
		})
	}
}

// TestPathInterceptRoundRobin: successive intercepted flows go to the
// family's upstreams in the operator's order, with their ports.
func TestPathInterceptRoundRobin(t *testing.T) {
	t.Parallel()
	s := pathSim(t, pathSettings(true, false))
	for _, tc := range []struct {
		src, dst netip.Addr
		want     []string
	}{
		{pathClient4, pathPublic4, []string{"198.18.2.11:53", "198.18.2.12:53", "198.18.1.53:53"}},
		{pathClient6, pathPublic6, []string{"[2001:db8:2::11]:53", "[2001:db8:2::12]:5353"}},
	} {
		var got []string
		for i := range 2 * len(tc.want) {
			r := follow(t, s, packet{tc.src, tc.dst, "udp", 53, query(fmt.Sprintf("rr%d.example", i), 0x0100)})
			got = append(got, r.to.String())
		}
		want := append(slices.Clone(tc.want), tc.want...)
		if !slices.Equal(got, want) {
			t.Errorf("%v: upstreams %v, want %v", tc.dst, got, want)
		}
	}
}

// TestOptionCounters: each option declares its counters, and only then.
func TestOptionCounters(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		intercept, dot bool
		want           int
	}{{false, false, 0}, {true, false, 4}, {false, true, 4}, {true, true, 8}} {
		rs, err := Compile(pathSettings(tc.intercept, tc.dot), nil)
		if err != nil {
			t.Fatal(err)
		}
		extra := len(rs.Counters) - len(AllCounters())
		if extra != tc.want {
			t.Errorf("intercept=%v dot=%v: %d option counters, want %d", tc.intercept, tc.dot, extra, tc.want)
		}
		text := rs.Render()
		if got := strings.Contains(text, "intercepted_"); got != tc.intercept {
			t.Errorf("intercept=%v: ruleset mentions intercepted counters: %v", tc.intercept, got)
		}
		if got := strings.Contains(text, "th dport 853"); got != tc.dot {
			t.Errorf("dot=%v: ruleset has a port 853 rule: %v", tc.dot, got)
		}
	}
}

// TestIptablesRefusesOptions: the classic renderer says it cannot do the
// options instead of printing a ruleset without them.
func TestIptablesRefusesOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		intercept, dot bool
		want           string
	}{{true, false, "--intercept"}, {false, true, "--block-dot"}, {true, true, "--intercept"}} {
		for _, render := range []func(Settings, []*List) (string, error){RenderIptables, RenderIp6tables} {
			_, err := render(pathSettings(tc.intercept, tc.dot), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !IsInputError(err) {
				t.Errorf("intercept=%v dot=%v: err %v, want an input error naming %s", tc.intercept, tc.dot, err, tc.want)
			}
		}
	}
}

// TestInterceptGolden: the whole table with both options on, in nft syntax.
func TestInterceptGolden(t *testing.T) {
	t.Parallel()
	rs, err := Compile(pathSettings(true, true), []*List{{Path: "t.list", Names: map[string]int{"blocked.example": 1}}})
	if err != nil {
		t.Fatal(err)
	}
	got := rs.Render()
	checkGolden(t, "intercept.nft.golden", got)
}
