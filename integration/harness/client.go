//go:build linux

package harness

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Case says how a client writes the letters of a query name.
type Case int

// Letter-case modes.
const (
	AsIs   Case = iota // exactly as given
	Lower              // all lowercase
	Upper              // all uppercase
	Random             // each letter flipped at random (DNS 0x20 style)
)

// ApplyCase rewrites name's letters according to c.
func ApplyCase(name string, c Case) string {
	switch c {
	case Lower:
		return strings.ToLower(name)
	case Upper:
		return strings.ToUpper(name)
	case Random:
		b := []byte(name)
		for i, ch := range b {
			if (ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z') && rand.IntN(2) == 1 {
				b[i] = ch ^ 0x20
			}
		}
		return string(b)
	}
	return name
}

// DefaultTimeout is how long a query waits for an answer unless told
// otherwise. A blocked query costs this much, so tests run those in
// parallel.
const DefaultTimeout = 2 * time.Second

// Query is one DNS question sent from a namespace.
type Query struct {
	Name    string        // presentation form; a trailing dot is optional
	Type    uint16        // dns.TypeA if zero
	Proto   Proto         // UDP if empty
	Server  netip.Addr    // where to send it
	Port    uint16        // 53 if zero
	Timeout time.Duration // DefaultTimeout if zero
	Case    Case          // letter case of the name on the wire
	// SourcePort pins the UDP source port; zero means a fresh ephemeral
	// port (so a new conntrack flow) for every query. Pinning a port is
	// how a test makes several queries share one flow.
	SourcePort uint16
}

// Outcome is what came back for a Query.
type Outcome struct {
	Query    Query
	Sent     string   // the name as written on the wire
	Msg      *dns.Msg // the response, nil if none
	Upstream int      // upstream identity in the answer, 0 if none
	Err      error    // why there is no response
	Elapsed  time.Duration
}

// Answered reports whether a DNS response arrived.
func (o Outcome) Answered() bool { return o.Msg != nil }

// TimedOut reports whether the query got no response at all before its
// timeout: the signature of a silently dropped packet.
func (o Outcome) TimedOut() bool {
	var ne net.Error
	return o.Msg == nil && errors.As(o.Err, &ne) && ne.Timeout()
}

// Refused reports whether the query was refused at the transport level
// (ICMP port unreachable for UDP, RST for TCP).
func (o Outcome) Refused() bool {
	return errors.Is(o.Err, syscall.ECONNREFUSED)
}

// String describes the outcome for test messages, e.g. "answered by
// upstream-2 (NOERROR)" or "no answer: timeout".
func (o Outcome) String() string {
	q := o.Query
	head := fmt.Sprintf("%s %s %s@%s", q.Proto, dns.TypeToString[q.Type], o.Sent, q.Server)
	switch {
	case o.Msg != nil && o.Upstream != 0:
		return fmt.Sprintf("%s: answered by upstream-%d (%s)", head, o.Upstream, dns.RcodeToString[o.Msg.Rcode])
	case o.Msg != nil:
		return fmt.Sprintf("%s: answered (%s) without identity", head, dns.RcodeToString[o.Msg.Rcode])
	case o.TimedOut():
		return head + ": no answer: timeout"
	default:
		return fmt.Sprintf("%s: no answer: %v", head, o.Err)
	}
}

// Exchange sends q from namespace ns and waits for the response. The
// socket is created inside ns (see Do) and is always a new one, so every
// call is a new flow unless q.SourcePort pins the UDP port.
func Exchange(ctx context.Context, ns string, q Query) Outcome {
	if q.Type == 0 {
		q.Type = dns.TypeA
	}
	if q.Proto == "" {
		q.Proto = UDP
	}
	if q.Port == 0 {
		q.Port = 53
	}
	if q.Timeout == 0 {
		q.Timeout = DefaultTimeout
	}
	o := Outcome{Query: q, Sent: dns.Fqdn(ApplyCase(q.Name, q.Case))}
	start := time.Now()
	defer func() { o.Elapsed = time.Since(start) }()

	deadline := start.Add(q.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	req := new(dns.Msg)
	req.SetQuestion(o.Sent, q.Type) // keeps the letter case as given
	req.RecursionDesired = true
	wire, err := req.Pack()
	if err != nil {
		o.Err = fmt.Errorf("pack: %w", err)
		return o
	}

	var conn net.Conn
	err = Do(ns, func() error {
		d := net.Dialer{Deadline: deadline}
		if q.SourcePort != 0 {
			if q.Proto != UDP {
				return errors.New("SourcePort is only supported for UDP")
			}
			d.LocalAddr = &net.UDPAddr{Port: int(q.SourcePort)}
		}
		var err error
		conn, err = d.DialContext(ctx, string(q.Proto), netip.AddrPortFrom(q.Server, q.Port).String())
		return err
	})
	if err != nil {
		o.Err = err
		return o
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		o.Err = err
		return o
	}
	// Close the socket when ctx ends so a cancelled run does not wait for
	// the full timeout.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	resp, err := RoundTrip(conn, q.Proto, wire, req.Id)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		o.Err = err
		return o
	}
	o.Msg = resp
	o.Upstream = UpstreamFromAnswer(resp)
	return o
}

// RoundTrip writes one query (over TCP with its length prefix, in one
// write) and reads responses until one with the same id arrives (or the
// connection's deadline passes).
func RoundTrip(conn net.Conn, p Proto, wire []byte, id uint16) (*dns.Msg, error) {
	if p == TCP {
		// Length prefix and message in one write, hence one segment:
		// the shape a fixed-offset check in the kernel expects.
		buf := make([]byte, 2+len(wire))
		binary.BigEndian.PutUint16(buf, uint16(len(wire)))
		copy(buf[2:], wire)
		if _, err := conn.Write(buf); err != nil {
			return nil, err
		}
	} else if _, err := conn.Write(wire); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for range 16 { // bounded: ignore at most a few stray datagrams
		var n int
		var err error
		if p == TCP {
			var l [2]byte
			if _, err = io.ReadFull(conn, l[:]); err != nil {
				return nil, err
			}
			n = int(binary.BigEndian.Uint16(l[:]))
			_, err = io.ReadFull(conn, buf[:n])
		} else {
			n, err = conn.Read(buf)
		}
		if err != nil {
			return nil, err
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			return nil, fmt.Errorf("unpack response: %w", err)
		}
		if m.Id == id && m.Response {
			return m, nil
		}
	}
	return nil, errors.New("no matching response among the datagrams received")
}

// ExchangeAll runs queries concurrently (at most parallel at a time) and
// returns the outcomes in the order of qs. Useful when many queries are
// expected to time out.
func ExchangeAll(ctx context.Context, ns string, qs []Query, parallel int) []Outcome {
	if parallel <= 0 {
		parallel = 16
	}
	out := make([]Outcome, len(qs))
	sem := make(chan struct{}, parallel)
	done := make(chan struct{})
	for i, q := range qs {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; done <- struct{}{} }()
			out[i] = Exchange(ctx, ns, q)
		}()
	}
	for range qs {
		<-done
	}
	return out
}
