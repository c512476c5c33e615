//go:build linux

package harness

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Identity records. Every upstream answers every query with its own
// identity, so a client can tell which upstream a DNAT picked.
var (
	idV4Prefix = [3]byte{192, 0, 2}                     // A 192.0.2.ID
	idV6Prefix = netip.MustParseAddr("2001:db8:ffff::") // AAAA 2001:db8:ffff::ID
	idTXT      = "upstream-"                            // TXT "upstream-ID"
)

// Received is one DNS query as an upstream server saw it.
type Received struct {
	Upstream int            // which upstream's server got it
	Family   Family         // family of the server address it arrived on
	Proto    Proto          // transport
	Name     string         // question name, lowercase, no trailing dot
	QName    string         // question name exactly as received (case kept)
	Src      netip.AddrPort // source as seen by the upstream (the box's address after masquerade)
	Time     time.Time
}

// QueryLog records what the upstream servers received. It keeps at most
// maxLogged entries so a runaway test cannot eat memory.
type QueryLog struct {
	mu      sync.Mutex
	entries []Received
	dropped int
}

const maxLogged = 200000

func newQueryLog() *QueryLog { return &QueryLog{} }

func (l *QueryLog) add(r Received) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.entries) >= maxLogged {
		l.dropped++
		return
	}
	l.entries = append(l.entries, r)
}

// All returns a copy of every logged query.
func (l *QueryLog) All() []Received {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Received(nil), l.entries...)
}

// Count counts logged queries for which keep returns true (all if nil).
func (l *QueryLog) Count(keep func(Received) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.entries {
		if keep == nil || keep(r) {
			n++
		}
	}
	return n
}

// CountName counts the queries for a name, in any letter case, that reached
// any upstream.
func (l *QueryLog) CountName(name string) int {
	want := canonical(name)
	return l.Count(func(r Received) bool { return r.Name == want })
}

// canonical is the form names are logged under: lowercase, no trailing dot.
func canonical(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

// server answers DNS for one upstream on one address and transport.
type server struct {
	up    Upstream
	fam   Family
	proto Proto
	log   *QueryLog
}

func (s *server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	src, _ := netip.ParseAddrPort(w.RemoteAddr().String())
	s.log.add(Received{
		Upstream: s.up.ID, Family: s.fam, Proto: s.proto,
		Name: canonical(q.Name), QName: q.Name,
		Src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), Time: time.Now(),
	})
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	// Compression keeps answers to 250-byte names under 512 bytes, so no
	// client needs EDNS or truncation handling.
	m.Compress = true
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Rrtype: q.Qtype, Ttl: 60}
	switch q.Qtype {
	case dns.TypeA:
		a := [4]byte{idV4Prefix[0], idV4Prefix[1], idV4Prefix[2], byte(s.up.ID)}
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IP(a[:])})
	case dns.TypeAAAA:
		a := idV6Prefix.As16()
		a[15] = byte(s.up.ID)
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.IP(a[:])})
	default:
		hdr.Rrtype = dns.TypeTXT
		m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{s.up.Name()}})
	}
	_ = w.WriteMsg(m)
}

// UpstreamFromAnswer tells which upstream produced a response, from the
// identity record in its answer section; 0 if none is recognisable.
func UpstreamFromAnswer(m *dns.Msg) int {
	if m == nil {
		return 0
	}
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			if a := rr.A.To4(); a != nil && a[0] == idV4Prefix[0] && a[1] == idV4Prefix[1] && a[2] == idV4Prefix[2] {
				return int(a[3])
			}
		case *dns.AAAA:
			a, ok := netip.AddrFromSlice(rr.AAAA)
			if !ok {
				continue
			}
			b, p := a.As16(), idV6Prefix.As16()
			if [15]byte(b[:15]) == [15]byte(p[:15]) {
				return int(b[15])
			}
		case *dns.TXT:
			for _, s := range rr.Txt {
				var id int
				if _, err := fmt.Sscanf(s, idTXT+"%d", &id); err == nil {
					return id
				}
			}
		}
	}
	return 0
}

// startServers binds UDP and TCP DNS servers on every upstream address,
// both families, inside the upstream namespace.
func (t *Topology) startServers() error {
	t.addCloser(func() error {
		for _, u := range t.Upstreams {
			t.StopUpstream(u.ID)
		}
		return nil
	})
	for _, u := range t.Upstreams {
		if err := t.StartUpstream(u.ID); err != nil {
			return err
		}
	}
	return nil
}

// StopUpstream shuts the DNS servers of upstream id down (UDP and TCP, both
// families): its addresses stay, so queries to it get ICMP port
// unreachable, like a crashed resolver's. Stopping a stopped upstream does
// nothing.
func (t *Topology) StopUpstream(id int) {
	t.mu.Lock()
	servers := t.servers[id]
	delete(t.servers, id)
	t.mu.Unlock()
	for _, s := range servers {
		_ = s.Shutdown()
	}
}

// StartUpstream (re)starts the DNS servers of upstream id; they log into
// t.Log as before. Starting a running upstream is an error.
func (t *Topology) StartUpstream(id int) error {
	t.mu.Lock()
	if t.servers == nil {
		t.servers = map[int][]*dns.Server{}
	}
	running := t.servers[id] != nil
	t.mu.Unlock()
	if running {
		return fmt.Errorf("upstream-%d is running", id)
	}
	var u Upstream
	for _, x := range t.Upstreams {
		if x.ID == id {
			u = x
		}
	}
	if u.ID == 0 {
		return fmt.Errorf("no upstream-%d", id)
	}
	var started []*dns.Server
	for _, f := range Families {
		ss, err := t.startServer(t.Upstream, u, f)
		if err != nil {
			for _, s := range started {
				_ = s.Shutdown()
			}
			return err
		}
		started = append(started, ss...)
	}
	t.mu.Lock()
	t.servers[id] = started
	t.mu.Unlock()
	return nil
}

// startServer binds UDP and TCP DNS servers for u's address of family f in
// namespace ns, logging into t.Log; the caller stops them.
func (t *Topology) startServer(ns string, u Upstream, f Family) ([]*dns.Server, error) {
	addr := netip.AddrPortFrom(u.Addr(f), 53).String()
	var pc net.PacketConn
	var ln net.Listener
	err := Do(ns, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp", addr); err != nil {
			pc.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns, err)
	}
	us := &dns.Server{PacketConn: pc, Handler: &server{u, f, UDP, t.Log}}
	// A generous TCP read timeout (miekg/dns defaults to 2 s): on a
	// loaded 2-core machine a retransmitted query segment can take
	// longer, and a server that hangs up first turns a slow query
	// into a "lost" one in the tests.
	ts := &dns.Server{Listener: ln, Handler: &server{u, f, TCP, t.Log}, ReadTimeout: 10 * time.Second}
	var started []*dns.Server
	for _, s := range []*dns.Server{us, ts} {
		ready := make(chan struct{})
		s.NotifyStartedFunc = func() { close(ready) }
		go func() { _ = s.ActivateAndServe() }()
		select {
		case <-ready:
		case <-time.After(5 * time.Second):
			_ = s.Shutdown()
			for _, o := range started {
				_ = o.Shutdown()
			}
			return nil, fmt.Errorf("dns server on %s did not start", addr)
		}
		started = append(started, s)
	}
	return started, nil
}
