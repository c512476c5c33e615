package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"nftdns/rules"

	"nftdns/nft"
)

// The round-robin maps the compiler makes (rules/compile.go
// addAddressSets): slot i -> the i-th upstream of the family, as address
// bytes, 2 port bytes and 2 bytes of padding.
var rrMaps = []struct {
	name    string
	addrLen int
}{{"rr4", 4}, {"rr6", 16}}

// Health and the round robin. The rule says "numgen inc mod N": N is in the
// rule, so taking an upstream out by shrinking the map would change the
// rule, and with it the structure (a full apply of every set). Instead the
// map keeps its N slots and the health checker rewrites the data of the
// slots of upstreams that are down, giving each to the healthy upstreams of
// the family in turn: a transaction of a few element changes. Shares are
// then uneven by at most one slot (3 upstreams, 1 down: 2/3 and 1/3); the
// nftdns_upstream_share metric shows them. If no upstream of a family is
// healthy, the map stays as compiled: never an empty map, and a resolver
// that is only slow keeps getting its share.

// upstreamOf decodes a round-robin map value.
func upstreamOf(data []byte, addrLen int) (netip.AddrPort, bool) {
	if len(data) < addrLen+2 {
		return netip.AddrPort{}, false
	}
	a, ok := netip.AddrFromSlice(data[:addrLen])
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, uint16(data[addrLen])<<8|uint16(data[addrLen+1])), true
}

// remapRR returns rs with the round-robin slots of the upstreams for which
// up is false given to healthy ones, sharing everything but those maps.
// It also returns each upstream's share of the slots of its family.
func remapRR(rs *rules.Ruleset, up func(netip.AddrPort) bool) (*rules.Ruleset, map[netip.AddrPort]float64) {
	out := *rs
	out.Sets = slices.Clone(rs.Sets)
	share := map[netip.AddrPort]float64{}
	for i, s := range out.Sets {
		for _, m := range rrMaps {
			if s.Name != m.name || len(s.Elements) == 0 {
				continue
			}
			var healthy [][]byte
			for _, e := range s.Elements {
				if u, ok := upstreamOf(e.Data, m.addrLen); ok && up(u) {
					healthy = append(healthy, e.Data)
				}
			}
			ns := *s
			if len(healthy) > 0 && len(healthy) < len(s.Elements) {
				ns.Elements = slices.Clone(s.Elements)
				next := 0
				for j := range ns.Elements {
					if u, ok := upstreamOf(ns.Elements[j].Data, m.addrLen); !ok || !up(u) {
						ns.Elements[j].Data = healthy[next%len(healthy)]
						next++
					}
				}
			}
			for _, e := range ns.Elements {
				if u, ok := upstreamOf(e.Data, m.addrLen); ok {
					share[u] += 1 / float64(len(ns.Elements))
				}
			}
			out.Sets[i] = &ns
		}
	}
	return &out, share
}

// unknownRR returns rs with the round-robin map values zeroed: a base for
// the first apply of a daemon, which cannot know how an earlier daemon
// left the slots, so every slot is written again (a few elements).
func unknownRR(rs *rules.Ruleset) *rules.Ruleset {
	out := *rs
	out.Sets = slices.Clone(rs.Sets)
	for i, s := range out.Sets {
		for _, m := range rrMaps {
			if s.Name == m.name {
				ns := *s
				ns.Elements = slices.Clone(s.Elements)
				for j := range ns.Elements {
					ns.Elements[j].Data = make([]byte, len(ns.Elements[j].Data))
				}
				out.Sets[i] = &ns
			}
		}
	}
	return &out
}

// prober sends health-check queries from inside a network namespace.
type prober struct {
	ns netns.NsHandle // -1: the current namespace
}

// newProber opens the namespace named as --netns names it.
func newProber(name string) (*prober, error) {
	h, err := nft.OpenNetns(name)
	if err != nil {
		return nil, err
	}
	return &prober{ns: h}, nil
}

func (p *prober) Close() error {
	if p.ns == -1 {
		return nil
	}
	return p.ns.Close()
}

// dial opens a UDP socket to addr inside the namespace: a socket stays in
// the namespace it was made in, so only its creation needs the switch.
func (p *prober) dial(addr netip.AddrPort) (net.Conn, error) {
	if p.ns == -1 {
		return net.Dial("udp", addr.String())
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	if err := netns.Set(p.ns); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	c, derr := net.Dial("udp", addr.String())
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine rather
		// than serve others from the wrong namespace.
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("switch back from the namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return c, derr
}

// probe asks upstream u for the NS records of the root over UDP and
// succeeds on an answer with our id whose rcode is NOERROR or NXDOMAIN:
// a resolver that answers SERVFAIL or REFUSED cannot serve clients either.
func (p *prober) probe(ctx context.Context, u netip.AddrPort, timeout time.Duration) error {
	c, err := p.dial(u)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	q := new(dns.Msg)
	q.SetQuestion(".", dns.TypeNS)
	wire, err := q.Pack()
	if err != nil {
		return err
	}
	if _, err := c.Write(wire); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) != nil || r.Id != q.Id || !r.Response {
			continue // not our answer
		}
		if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			return errors.New("answered " + dns.RcodeToString[r.Rcode])
		}
		return nil
	}
}
