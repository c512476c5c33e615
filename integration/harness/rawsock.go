//go:build linux

package harness

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RawLink sends hand-built IP packets out of the client's interface with an
// AF_PACKET socket: the client's IP stack never sees them, so options,
// extension headers and fragments reach the box exactly as built (no
// checksum offload on this path: the builders compute the checksums).
type RawLink struct {
	fd      int
	ifindex int
	dstMAC  net.HardwareAddr
	mu      sync.Mutex
	closed  bool
}

// NewRawLink opens a packet socket on the client's interface, addressed to
// the box's client-side MAC. Close it when done.
func (t *Topology) NewRawLink() (*RawLink, error) {
	var mac net.HardwareAddr
	if err := Do(t.Box, func() error {
		ifi, err := net.InterfaceByName(BoxClientIf)
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr
		return nil
	}); err != nil {
		return nil, fmt.Errorf("box mac: %w", err)
	}
	l := &RawLink{dstMAC: mac, fd: -1}
	if err := Do(t.Client, func() error {
		ifi, err := net.InterfaceByName(peerIf)
		if err != nil {
			return err
		}
		l.ifindex = ifi.Index
		// Protocol 0: send only, receive nothing.
		l.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		return nil, fmt.Errorf("packet socket in %s: %w", t.Client, err)
	}
	return l, nil
}

// Send transmits one IP packet (IPv4 or IPv6, from its version nibble).
func (l *RawLink) Send(pkt []byte) error {
	if len(pkt) == 0 {
		return errors.New("empty packet")
	}
	eth := uint16(unix.ETH_P_IP)
	if pkt[0]>>4 == 6 {
		eth = unix.ETH_P_IPV6
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(eth), Ifindex: l.ifindex, Halen: 6}
	copy(sa.Addr[:], l.dstMAC)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return net.ErrClosed
	}
	return unix.Sendto(l.fd, pkt, 0, sa)
}

// SendAll transmits packets in order with gap between them.
func (l *RawLink) SendAll(pkts [][]byte, gap time.Duration) error {
	for i, p := range pkts {
		if i > 0 && gap > 0 {
			time.Sleep(gap)
		}
		if err := l.Send(p); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the socket.
func (l *RawLink) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return unix.Close(l.fd)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// UDPReceiver is a UDP socket bound in the client namespace whose port the
// raw packets use as their source, so the client's kernel delivers the
// responses to it.
type UDPReceiver struct {
	conn *net.UDPConn
	Addr netip.AddrPort // the client address and bound port
}

// ListenClientUDP binds a fresh UDP port on the client's address of family f.
func (t *Topology) ListenClientUDP(f Family) (*UDPReceiver, error) {
	addr := ClientAddr4
	if f == V6 {
		addr = ClientAddr6
	}
	var c *net.UDPConn
	err := Do(t.Client, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		return err
	})
	if err != nil {
		return nil, err
	}
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return &UDPReceiver{conn: c, Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// Responses collects the datagrams that arrive from `from` until the
// deadline (or ctx) ends or limit have arrived.
func (r *UDPReceiver) Responses(ctx context.Context, from netip.AddrPort, deadline time.Time, limit int) [][]byte {
	stop := context.AfterFunc(ctx, func() { _ = r.conn.SetReadDeadline(time.Now()) })
	defer stop()
	_ = r.conn.SetReadDeadline(deadline)
	var out [][]byte
	buf := make([]byte, 65535)
	for range 64 { // bounded; the deadline ends it anyway
		n, src, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if netip.AddrPortFrom(src.Addr().Unmap(), src.Port()) != from {
			continue
		}
		out = append(out, append([]byte(nil), buf[:n]...))
		if len(out) >= limit {
			break
		}
	}
	return out
}

// Close closes the socket.
func (r *UDPReceiver) Close() error { return r.conn.Close() }

// TCPOpts are socket options for DialClientTCP.
type TCPOpts struct {
	IPOptions  []byte // IPv4: IP_OPTIONS on every segment (e.g. NOP, Record Route)
	HopOpts    []byte // IPv6: a whole hop-by-hop header for IPV6_HOPOPTS
	DstOpts    []byte // IPv6: a whole destination-options header for IPV6_DSTOPTS
	Deadline   time.Time
	ServerPort uint16 // 53 if zero
}

// DialClientTCP opens a TCP connection from the client namespace with
// TCP_NODELAY, so every Write leaves as its own segment as soon as the
// congestion window allows (the handshake passes the filter unchecked).
func (t *Topology) DialClientTCP(ctx context.Context, dst netip.Addr, o TCPOpts) (*net.TCPConn, error) {
	port := o.ServerPort
	if port == 0 {
		port = 53
	}
	var conn net.Conn
	err := Do(t.Client, func() error {
		d := net.Dialer{Deadline: o.Deadline, Control: func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if len(o.IPOptions) > 0 {
					serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IP, unix.IP_OPTIONS, string(o.IPOptions))
				}
				if serr == nil && len(o.HopOpts) > 0 {
					serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_HOPOPTS, string(o.HopOpts))
				}
				if serr == nil && len(o.DstOpts) > 0 {
					serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, string(o.DstOpts))
				}
			})
			return errors.Join(err, serr)
		}}
		var err error
		conn, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(dst, port).String())
		return err
	})
	if err != nil {
		return nil, err
	}
	tc := conn.(*net.TCPConn)
	if err := tc.SetNoDelay(true); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

// ReadTCPMessages reads length-prefixed DNS messages from c until the
// deadline, EOF or limit messages.
func ReadTCPMessages(c net.Conn, deadline time.Time, limit int) [][]byte {
	_ = c.SetReadDeadline(deadline)
	var out [][]byte
	for len(out) < limit {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			break
		}
		m := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, m); err != nil {
			break
		}
		out = append(out, m)
	}
	return out
}

// Sniffer records the transport payloads of every UDP and TCP packet
// delivered to the upstream namespace, after the upstream kernel's own
// reassembly of fragments (raw IP sockets receive reassembled datagrams).
// It is ground truth for shapes the upstream DNS servers refuse before
// logging them (QR=1, odd opcodes, QDCOUNT != 1): if a query's bytes are
// here, the box let the query through.
type Sniffer struct {
	mu      sync.Mutex
	pkts    [][]byte
	dropped int
	conns   []net.PacketConn
	wg      sync.WaitGroup
}

const maxSniffed = 100000

// StartSniffer starts raw IPv4 and IPv6 UDP and TCP listeners in the
// upstream namespace. They stop at Close or when the topology closes.
func (t *Topology) StartSniffer() (*Sniffer, error) {
	s := &Sniffer{}
	err := Do(t.Upstream, func() error {
		for _, nw := range []string{"ip4:udp", "ip4:tcp", "ip6:udp", "ip6:tcp"} {
			laddr := "0.0.0.0"
			if nw[2] == '6' {
				laddr = "::"
			}
			c, err := net.ListenPacket(nw, laddr)
			if err != nil {
				return fmt.Errorf("listen %s: %w", nw, err)
			}
			s.conns = append(s.conns, c)
		}
		return nil
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	for _, c := range s.conns {
		s.wg.Add(1)
		go s.read(c)
	}
	t.addCloser(s.Close)
	return s, nil
}

func (s *Sniffer) read(c net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.mu.Lock()
		if len(s.pkts) < maxSniffed {
			s.pkts = append(s.pkts, append([]byte(nil), buf[:n]...))
		} else {
			s.dropped++
		}
		s.mu.Unlock()
	}
}

// Seen reports whether any delivered packet contains needle, comparing
// ASCII letters case-insensitively (queries may mix case).
func (s *Sniffer) Seen(needle []byte) bool {
	n := asciiLower(needle)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pkts {
		if bytes.Contains(asciiLower(p), n) {
			return true
		}
	}
	return false
}

// Close stops the listeners; safe to call twice.
func (s *Sniffer) Close() error {
	var errs []error
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, c := range conns {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// asciiLower folds A-Z only (bytes.ToLower would rewrite invalid UTF-8).
func asciiLower(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return out
}
