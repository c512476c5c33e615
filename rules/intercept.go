package rules

import "fmt"

// DoTPort is DNS over TLS (RFC 7858), over TCP, and DNS over DTLS or QUIC
// (RFC 8094, RFC 9250) over UDP.
const DoTPort = 853

// Counter kinds of the two options; named kind_family_proto like checked.
const (
	// CounterIntercepted counts new flows (a UDP query from a fresh source
	// port, a TCP connection) from the client networks to an address that
	// is not a listen address, DNATed to the upstreams by --intercept.
	CounterIntercepted = "intercepted"
	// CounterDoTBlocked counts packets to port 853 from the client
	// networks dropped by --block-dot.
	CounterDoTBlocked = "dot_blocked"
)

// optionCounters are the named counters the options add to a table; a
// table without the option has none of them, so status shows only what
// is in force.
func optionCounters(s Settings) []string {
	var out []string
	for _, k := range []struct {
		on   bool
		kind string
	}{{s.Intercept, CounterIntercepted}, {s.BlockDoT, CounterDoTBlocked}} {
		if !k.on {
			continue
		}
		for _, f := range []string{"ipv4", "ipv6"} {
			for _, p := range []string{"udp", "tcp"} {
				out = append(out, CounterName(k.kind, f, p))
			}
		}
	}
	return out
}

// dotRules drop DNS over TLS from the client networks in the raw prerouting
// chain, forwarded or to the box alike, before conntrack sees it (so a
// client retrying its TLS handshake creates no conntrack entries). Drop,
// not reject: the aim is the fallback to port 53, which clients take after
// their connect timeout either way.
func (c *compiler) dotRules() []Rule {
	if !c.s.BlockDoT {
		return nil
	}
	var out []Rule
	for _, f := range []Family{IPv4, IPv6} {
		for _, t := range []transport{udp, tcp} {
			out = append(out, newRule().nfproto(f).addrInSet(f, false, "clients"+famSuffix(f), false).
				l4proto(t).dport(DoTPort).
				counter(CounterName(CounterDoTBlocked, familyName(f), t.name)).verdict(Drop, "").rule())
		}
	}
	return out
}

// interceptRules DNAT queries from the client networks to any other address
// round robin to the family's n upstreams, like queries to a listen address
// (the raw chain has already checked them: it checks every client query
// whatever its destination). Conntrack's reverse NAT makes the answers come
// from the address the client asked. They go after the listen-address
// rules in nat-prerouting.
//
// Not intercepted:
//   - sources outside the client networks: the box is not their resolver;
//     their queries meet the forward chain's policy like any other packet;
//   - queries from an upstream's own address (an upstream inside a client
//     network resolving through the box): redirecting them to the upstreams
//     would loop; they meet the forward policy instead;
//   - the box's own queries: they never pass the prerouting hook (and on
//     loopback the nat binding was already made on output).
//
// A query from a client to an upstream's address is intercepted like any
// other (and may be answered by another upstream): no loop, one hop.
func (c *compiler) interceptRules(f Family, n int, rr string) []Rule {
	if !c.s.Intercept || n == 0 {
		return nil
	}
	sfx, kw := famSuffix(f), map[Family]string{IPv4: "ip", IPv6: "ip6"}[f]
	portReg := Reg(1)
	if f == IPv6 {
		portReg = 4
	}
	var out []Rule
	for _, t := range []transport{udp, tcp} {
		out = append(out, newRule().nfproto(f).
			addrInSet(f, false, "clients"+sfx, false).addrInSet(f, false, "upstreams"+sfx, true).
			addrInSet(f, true, "listen"+sfx, true).
			l4proto(t).dport(DNSPort).
			counter(CounterName(CounterIntercepted, familyName(f), t.name)).
			add(fmt.Sprintf("dnat %s to numgen inc mod %d map @%s", kw, n, rr),
				Numgen{Dst: 0, Modulus: uint32(n)},
				Lookup{Set: rr, Src: 0, Dst: 0, IsMap: true},
				NAT{Kind: DNAT, Family: f, Addr: 0, Proto: portReg, HasProto: true}).rule())
	}
	return out
}

func famSuffix(f Family) string {
	if f == IPv6 {
		return "6"
	}
	return "4"
}

// xtUnsupported refuses the options the classic iptables renderer does not
// translate, rather than print a ruleset that silently lacks them.
func xtUnsupported(s Settings) error {
	switch {
	case s.Intercept:
		return inputErrorf("--intercept is not supported by the iptables renderer (use the nftables table)")
	case s.BlockDoT:
		return inputErrorf("--block-dot is not supported by the iptables renderer (use the nftables table)")
	case s.Strict:
		return inputErrorf("--strict is not supported by the iptables renderer (use the nftables table)")
	}
	return nil
}
