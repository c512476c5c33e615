//go:build linux

package harness

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// FloodSpec describes a bounded flood of UDP DNS queries sent from raw
// sockets, so that every packet can carry its own source port (a new
// conntrack flow each, as far as the box can tell) without one socket per
// port. The flood stops at Count packets or after Duration, whichever
// comes first.
type FloodSpec struct {
	Dst      []netip.Addr  // destinations (port 53), used in turn; IPv4 and IPv6 may mix
	Names    []string      // question names, used in turn
	Case     Case          // letter case of the names on the wire
	Count    int           // packets to send at most
	Duration time.Duration // sending stops after this at the latest
	// Rate paces the flood at this many packets per second over all
	// workers; zero sends as fast as the workers can.
	Rate    int
	Workers int // sending goroutines; 4 if zero
	// PortBase is the first source port. Each destination gets the ports
	// from PortBase upwards in turn, wrapping after 50000, so the first
	// 50000 packets to each destination are distinct flows. Zero means
	// 10000.
	PortBase uint16
}

// FloodResult is what a flood sent.
type FloodResult struct {
	Sent    int           // packets handed to the kernel
	Errors  int           // sends that failed (e.g. ENOBUFS), not retried
	Elapsed time.Duration // from the first send to the last
	Err     error         // the first send error, if any
}

// PPS is the achieved send rate.
func (r FloodResult) PPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Elapsed.Seconds()
}

const (
	floodPortSpan       = 50000
	floodVariants       = 64 // pre-built letter-case variants per name
	defaultFloodPort    = 10000
	defaultFloodWorkers = 4
)

// Flood sends spec's queries from namespace ns through raw sockets (one
// per family per worker, created inside ns) and returns what was sent. It
// never waits for answers: count them elsewhere (the upstreams' QueryLog,
// the box's counters). The UDP checksum is left zero over IPv4 (allowed)
// and computed by the kernel over IPv6 (IPV6_CHECKSUM).
func Flood(ctx context.Context, ns string, spec FloodSpec) (FloodResult, error) {
	if len(spec.Dst) == 0 || len(spec.Names) == 0 || spec.Count <= 0 || spec.Duration <= 0 {
		return FloodResult{}, errors.New("flood: need destinations, names, a count and a duration")
	}
	workers := spec.Workers
	if workers <= 0 {
		workers = defaultFloodWorkers
	}
	portBase := spec.PortBase
	if portBase == 0 {
		portBase = defaultFloodPort
	}
	if int(portBase)+floodPortSpan > 65535 {
		return FloodResult{}, fmt.Errorf("flood: port base %d too high", portBase)
	}
	// Templates: a DNS message per name and case variant; the id is
	// rewritten per packet.
	var tmpl [][]byte
	for _, n := range spec.Names {
		for range floodVariants {
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(ApplyCase(n, spec.Case)), dns.TypeA)
			m.RecursionDesired = true
			w, err := m.Pack()
			if err != nil {
				return FloodResult{}, fmt.Errorf("flood: pack %q: %w", n, err)
			}
			tmpl = append(tmpl, w)
			if spec.Case != Random {
				break // all variants would be the same
			}
		}
	}

	type sock struct{ fd4, fd6 int }
	socks := make([]sock, workers)
	closeAll := func() {
		for _, s := range socks {
			for _, fd := range []int{s.fd4, s.fd6} {
				if fd > 0 {
					unix.Close(fd)
				}
			}
		}
	}
	defer closeAll()
	err := Do(ns, func() error {
		for i := range socks {
			fd4, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
			if err != nil {
				return fmt.Errorf("raw udp4 socket: %w", err)
			}
			socks[i].fd4 = fd4
			fd6, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
			if err != nil {
				return fmt.Errorf("raw udp6 socket: %w", err)
			}
			socks[i].fd6 = fd6
			// The kernel fills in the UDP checksum at offset 6.
			if err := unix.SetsockoptInt(fd6, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 6); err != nil {
				return fmt.Errorf("IPV6_CHECKSUM: %w", err)
			}
			// Raw sockets also receive a copy of every UDP packet
			// that arrives; keep that small, nobody reads it.
			for _, fd := range []int{fd4, fd6} {
				_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
				_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
			}
		}
		return nil
	})
	if err != nil {
		return FloodResult{}, fmt.Errorf("flood from %s: %w", ns, err)
	}

	dsts := make([]unix.Sockaddr, len(spec.Dst))
	for i, a := range spec.Dst {
		if a.Is4() {
			dsts[i] = &unix.SockaddrInet4{Addr: a.As4()}
		} else {
			dsts[i] = &unix.SockaddrInet6{Addr: a.As16()}
		}
	}

	var next atomic.Int64 // index of the next packet to send, over all workers
	var sent, errs atomic.Int64
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	deadline := start.Add(spec.Duration)
	var lastSend atomic.Int64 // ns since start
	var wg sync.WaitGroup
	for w := range workers {
		s := socks[w]
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			buf := make([]byte, 8+512)
			for ctx.Err() == nil {
				now := time.Now()
				if now.After(deadline) {
					return
				}
				i := next.Add(1) - 1
				if i >= int64(spec.Count) {
					return
				}
				if spec.Rate > 0 {
					// Packet i is due at start + i/Rate. Sleeping for
					// less than a millisecond costs more than it
					// paces: such packets go out up to 1 ms early.
					due := start.Add(time.Duration(float64(i) / float64(spec.Rate) * float64(time.Second)))
					if d := due.Sub(now); d > time.Millisecond {
						if due.After(deadline) {
							return
						}
						time.Sleep(d)
					}
				}
				msg := tmpl[rng.IntN(len(tmpl))]
				n := 8 + len(msg)
				binary.BigEndian.PutUint16(buf[0:], portBase+uint16(i/int64(len(dsts))%floodPortSpan))
				binary.BigEndian.PutUint16(buf[2:], 53)
				binary.BigEndian.PutUint16(buf[4:], uint16(n))
				binary.BigEndian.PutUint16(buf[6:], 0)
				copy(buf[8:], msg)
				binary.BigEndian.PutUint16(buf[8:], uint16(rng.Uint32())) // DNS id
				dst := dsts[int(i)%len(dsts)]
				fd := s.fd4
				if _, ok := dst.(*unix.SockaddrInet6); ok {
					fd = s.fd6
				}
				if err := unix.Sendto(fd, buf[:n], 0, dst); err != nil {
					errs.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				sent.Add(1)
				lastSend.Store(int64(time.Since(start)))
			}
		})
	}
	wg.Wait()
	return FloodResult{
		Sent:    int(sent.Load()),
		Errors:  int(errs.Load()),
		Elapsed: time.Duration(lastSend.Load()),
		Err:     firstErr,
	}, nil
}
