//go:build linux

package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// ProbePort is where the upstream namespace listens for non-DNS probes
// (UDP and TCP, every address). Nothing from a client should ever reach it
// through the box.
const ProbePort = 9999

// probeWait bounds how long a probe waits for its packet to show up.
const probeWait = time.Second

// ProbeLog records the tokens of probes that arrived in the upstream
// namespace, by kind ("udp", "tcp", "icmp").
type ProbeLog struct {
	mu   sync.Mutex
	seen map[string]string // token -> kind
}

func newProbeLog() *ProbeLog { return &ProbeLog{seen: map[string]string{}} }

func (p *ProbeLog) add(kind, token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) < maxLogged {
		p.seen[token] = kind
	}
}

func (p *ProbeLog) has(token string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.seen[token]
	return ok
}

// waitFor polls for token until it arrives or probeWait passes.
func (p *ProbeLog) waitFor(ctx context.Context, token string) bool {
	deadline := time.Now().Add(probeWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if p.has(token) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p.has(token)
}

func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "probe-" + hex.EncodeToString(b[:])
}

// startProbeListeners opens the UDP/TCP probe port and raw ICMP observers
// in the upstream namespace.
func (t *Topology) startProbeListeners() error {
	if err := t.ListenProbes(t.Upstream, ProbePort); err != nil {
		return err
	}
	var icmp4, icmp6 *icmp.PacketConn
	err := Do(t.Upstream, func() error {
		var err error
		// Raw ICMP sockets see every incoming echo request although the
		// kernel answers them itself.
		if icmp4, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0"); err != nil {
			return err
		}
		icmp6, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		return err
	})
	for _, c := range []*icmp.PacketConn{icmp4, icmp6} {
		if c != nil {
			t.addCloser(c.Close)
		}
	}
	if err != nil {
		return fmt.Errorf("probe listeners in %s: %w", t.Upstream, err)
	}
	for _, o := range []struct {
		c     *icmp.PacketConn
		proto int
	}{{icmp4, 1}, {icmp6, 58}} {
		go func() {
			buf := make([]byte, 1500)
			for {
				n, _, err := o.c.ReadFrom(buf)
				if err != nil {
					return
				}
				m, err := icmp.ParseMessage(o.proto, buf[:n])
				if err != nil {
					continue
				}
				if e, ok := m.Body.(*icmp.Echo); ok && (m.Type == ipv4.ICMPTypeEcho || m.Type == ipv6.ICMPTypeEchoRequest) {
					if tok := string(e.Data); strings.HasPrefix(tok, "probe-") {
						t.Probes.add("icmp", tok)
					}
				}
			}
		}()
	}
	return nil
}

// ListenProbes opens UDP and TCP probe listeners on port (all addresses,
// both families) in namespace ns; tokens they receive go to t.Probes, so
// ProbeUDP and ProbeTCP see them wherever they arrived. They stop at Close.
func (t *Topology) ListenProbes(ns string, port uint16) error {
	var pc net.PacketConn
	var ln net.Listener
	err := Do(ns, func() error {
		var err error
		// "[::]" with the default dual-stack socket gets IPv4 too.
		if pc, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port)); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	for _, c := range []io.Closer{pc, ln} {
		if c != nil {
			t.addCloser(c.Close)
		}
	}
	if err != nil {
		return fmt.Errorf("probe listeners on port %d in %s: %w", port, ns, err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			t.Probes.add("udp", string(buf[:n]))
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(probeWait))
				b := make([]byte, 64)
				n, _ := io.ReadAtLeast(c, b, len(newToken()))
				t.Probes.add("tcp", string(b[:n]))
			}()
		}
	}()
	return nil
}

// ProbeUDP sends one UDP datagram from ns to dst and reports whether it
// reached the upstream namespace's probe listener.
func (t *Topology) ProbeUDP(ctx context.Context, ns string, dst netip.AddrPort) (bool, error) {
	tok := newToken()
	var conn net.Conn
	if err := Do(ns, func() (err error) {
		conn, err = net.Dial("udp", dst.String())
		return err
	}); err != nil {
		return false, err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(tok)); err != nil {
		return false, err
	}
	return t.Probes.waitFor(ctx, tok), nil
}

// ProbeTCP opens a TCP connection from ns to dst and sends a token; it
// reports whether the token reached the upstream namespace's probe
// listener. A refused or timed-out connection is "did not arrive", not an
// error.
func (t *Topology) ProbeTCP(ctx context.Context, ns string, dst netip.AddrPort) (bool, error) {
	tok := newToken()
	var conn net.Conn
	var dialErr error
	if err := Do(ns, func() error {
		d := net.Dialer{Timeout: probeWait}
		conn, dialErr = d.DialContext(ctx, "tcp", dst.String())
		return nil
	}); err != nil {
		return false, err
	}
	if dialErr != nil {
		return false, nil
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(tok)); err != nil {
		return false, nil
	}
	return t.Probes.waitFor(ctx, tok), nil
}

// Ping sends one ICMP (or ICMPv6) echo request from ns to dst and reports
// whether it arrived in the upstream namespace (seen by a raw socket there),
// whatever happens to the reply.
func (t *Topology) Ping(ctx context.Context, ns string, dst netip.Addr) (bool, error) {
	tok := newToken()
	network, laddr := "ip4:icmp", "0.0.0.0"
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if dst.Is6() {
		network, laddr, typ = "ip6:ipv6-icmp", "::", ipv6.ICMPTypeEchoRequest
	}
	var c *icmp.PacketConn
	if err := Do(ns, func() (err error) {
		c, err = icmp.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return false, err
	}
	defer c.Close()
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: 0x4e46, Seq: 1, Data: []byte(tok)}}
	// For ICMPv6 the kernel fills in the checksum on raw sockets.
	b, err := msg.Marshal(nil)
	if err != nil {
		return false, err
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return false, err
	}
	return t.Probes.waitFor(ctx, tok), nil
}
