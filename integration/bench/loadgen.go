//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"nftdns/integration/harness"
)

// enterNetns locks the calling goroutine to its OS thread and moves the
// thread into the named namespace for good: the goroutine must never
// unlock, so when it returns Go discards the thread and no other goroutine
// ever runs in the wrong namespace. Sockets made with raw syscalls on the
// thread belong to that namespace.
func enterNetns(ns string) error {
	runtime.LockOSThread()
	h, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open netns %q: %w", ns, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("enter netns %q: %w", ns, err)
	}
	return nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func udpSocket(a netip.Addr, rcvTimeout time.Duration) (int, error) {
	af := unix.AF_INET
	if a.Is6() {
		af = unix.AF_INET6
	}
	fd, err := unix.Socket(af, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(rcvTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// responder is the fast upstream: one thread per socket, one socket per
// upstream address, answering each query with the query itself with QR set
// (the question echoed, no answer records). It stands in for a resolver
// that is never the bottleneck.
type responder struct {
	stop atomic.Bool
	wg   sync.WaitGroup
}

func startResponder(ns string, addrs []netip.Addr) (*responder, error) {
	ensureProcs()
	r := &responder{}
	errc := make(chan error, len(addrs))
	for _, a := range addrs {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := enterNetns(ns); err != nil {
				errc <- err
				return
			}
			fd, err := udpSocket(a, 100*time.Millisecond)
			if err == nil {
				err = unix.Bind(fd, sockaddr(netip.AddrPortFrom(a, 53)))
			}
			errc <- err
			if err != nil {
				return
			}
			defer unix.Close(fd)
			buf := make([]byte, 1500)
			var from rawAddr
			for !r.stop.Load() {
				k, errno := rawRecvfrom(fd, buf, 0, &from)
				if errno != 0 || k < 12 {
					continue
				}
				buf[2] |= 0x80 // QR: a response
				_ = rawSendto(fd, buf[:k], &from)
			}
		}()
	}
	var errs []error
	for range addrs {
		errs = append(errs, <-errc)
	}
	if err := errors.Join(errs...); err != nil {
		r.Stop()
		return nil, err
	}
	return r, nil
}

func (r *responder) Stop() {
	r.stop.Store(true)
	r.wg.Wait()
}

// Load modes.
const (
	modeAllowed = "allowed" // closed loop, names not listed
	modeBlocked = "blocked" // paced open loop, listed names (dropped by a filter)
	modeFresh   = "fresh"   // closed loop, allowed names, a new source port per query
)

// genSpec is one run of the load generator.
type genSpec struct {
	NS       string // client namespace
	Src      netip.Addr
	Dst      netip.Addr
	Mode     string
	Queries  [][]byte // wire queries, cycled
	Warmup   time.Duration
	Duration time.Duration
	Sockets  int           // steady modes: sockets (one thread each)
	InFlight int           // queries in flight per socket (allowed) / workers (fresh)
	Timeout  time.Duration // a query not answered by then is lost
	Rate     int           // blocked mode: queries per second, all sockets together
}

// genResult is one run's measurement window.
type genResult struct {
	Sent, Answered uint64  // in the window
	Seconds        float64 // window length
	WorkCPUus      float64 // CPU spent on the packets in the window, µs (see cpuSnap)
	BusyTicks      uint64  // CPU ticks (USER_HZ) busy on all CPUs in the window, whoever used them
	TotalSent      uint64  // whole run, after draining
	TotalAnswered  uint64
	Errors         uint64 // send/socket errors (e.g. port in use)
}

type genCounters struct {
	sent, answered, errs atomic.Uint64
	_                    [40]byte // keep workers' counters on separate cache lines
}

// runGen runs the generator: warm-up, a measured window, then stop and
// drain (wait Timeout for late answers).
func runGen(ctx context.Context, s genSpec) (genResult, error) {
	ensureProcs()
	// No collection while measuring: with many Ps idle, the GC's idle
	// mark workers would spin on the CPUs being measured.
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	workers := s.Sockets
	if s.Mode == modeFresh {
		workers = s.InFlight
	}
	cs := make([]genCounters, workers)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	var portNext atomic.Uint32
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := enterNetns(s.NS); err != nil {
				errc <- err
				return
			}
			var err error
			switch s.Mode {
			case modeAllowed:
				err = closedLoop(s, w, &cs[w], &stop)
			case modeBlocked:
				err = pacedLoop(s, w, workers, &cs[w], &stop)
			case modeFresh:
				err = freshLoop(s, w, &cs[w], &stop, &portNext)
			default:
				err = fmt.Errorf("unknown mode %q", s.Mode)
			}
			if err != nil {
				errc <- err
			}
		}()
	}
	sum := func() (sent, ans, errs uint64) {
		for i := range cs {
			sent += cs[i].sent.Load()
			ans += cs[i].answered.Load()
			errs += cs[i].errs.Load()
		}
		return
	}
	var res genResult
	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case <-time.After(d):
			return nil
		}
	}
	err := sleep(s.Warmup)
	if err == nil {
		s0, a0, _ := sum()
		c0, e0 := busyTicks()
		w0, e2 := readCPU()
		t0 := time.Now()
		err = errors.Join(e0, e2, sleep(s.Duration))
		c1, e1 := busyTicks()
		w1, e3 := readCPU()
		t1 := time.Now()
		res.WorkCPUus = w1.since(w0)
		err = errors.Join(err, e3)
		s1, a1, _ := sum()
		res.Sent, res.Answered = s1-s0, a1-a0
		res.Seconds = t1.Sub(t0).Seconds()
		res.BusyTicks = c1 - c0
		err = errors.Join(err, e1)
	}
	stop.Store(true)
	wg.Wait()
	res.TotalSent, res.TotalAnswered, res.Errors = sum()
	select {
	case e := <-errc:
		err = errors.Join(err, e)
	default:
	}
	return res, err
}

// closedLoop keeps InFlight queries outstanding on one connected socket:
// each answer sends the next query; when nothing arrives for Timeout, the
// outstanding ones count as lost and are replaced.
func closedLoop(s genSpec, w int, c *genCounters, stop *atomic.Bool) error {
	fd, err := udpSocket(s.Dst, s.Timeout)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(s.Src, 0))); err != nil {
		return err
	}
	if err := unix.Connect(fd, sockaddr(netip.AddrPortFrom(s.Dst, 53))); err != nil {
		return err
	}
	q := w * 7919 // each worker starts elsewhere in the names
	id := uint16(w << 12)
	pkt := make([]byte, 512)
	send := func() bool {
		b := s.Queries[q%len(s.Queries)]
		q++
		id++
		n := copy(pkt, b)
		binary.BigEndian.PutUint16(pkt, id)
		if rawWrite(fd, pkt[:n]) != 0 {
			c.errs.Add(1)
			return false
		}
		c.sent.Add(1)
		return true
	}
	outstanding := 0
	for range s.InFlight {
		if send() {
			outstanding++
		}
	}
	buf := make([]byte, 1500)
	for {
		n, err := rawRead(fd, buf)
		switch {
		case err == 0 && n >= 12 && buf[2]&0x80 != 0:
			c.answered.Add(1)
			outstanding--
		case err == unix.EAGAIN:
			outstanding = 0 // lost: all of them timed out
		case err == unix.EINTR:
			continue
		case err != 0:
			c.errs.Add(1)
		}
		if stop.Load() {
			if outstanding <= 0 {
				return nil
			}
			continue // drain until the answers arrive or time out
		}
		for outstanding < s.InFlight && send() {
			outstanding++
		}
	}
}

// pacedLoop sends at Rate/workers queries per second whatever comes back
// (blocked queries get no answer), in batches every millisecond, reading
// and counting any answers. It sleeps with a plain nanosleep on its locked
// thread: Go timers here would wake the scheduler thousands of times a
// second and the CPU they burn would count against every query.
func pacedLoop(s genSpec, w, workers int, c *genCounters, stop *atomic.Bool) error {
	fd, err := udpSocket(s.Dst, time.Millisecond)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(s.Src, 0))); err != nil {
		return err
	}
	if err := unix.Connect(fd, sockaddr(netip.AddrPortFrom(s.Dst, 53))); err != nil {
		return err
	}
	rate := float64(s.Rate) / float64(workers)
	q := w * 7919
	id := uint16(w << 12)
	pkt := make([]byte, 512)
	buf := make([]byte, 1500)
	var from rawAddr
	drain := func() {
		for {
			n, err := rawRecvfrom(fd, buf, unix.MSG_DONTWAIT, &from)
			if err != 0 {
				return
			}
			if n >= 12 && buf[2]&0x80 != 0 {
				c.answered.Add(1)
			}
		}
	}
	start := time.Now()
	var sent uint64
	for !stop.Load() {
		due := uint64(time.Since(start).Seconds() * rate)
		for ; sent < due; sent++ {
			b := s.Queries[q%len(s.Queries)]
			q++
			id++
			n := copy(pkt, b)
			binary.BigEndian.PutUint16(pkt, id)
			if rawWrite(fd, pkt[:n]) != 0 {
				c.errs.Add(1)
				continue
			}
			c.sent.Add(1)
		}
		drain()
		rawSleep(time.Millisecond)
	}
	// Late answers (no-filter side) still count.
	for range 100 {
		drain()
		rawSleep(time.Millisecond)
	}
	return nil
}

// freshLoop sends one query at a time, each from a new socket bound to the
// next source port (walking 1024-65535, shared by the workers), so every
// query is a new conntrack flow through the box.
func freshLoop(s genSpec, w int, c *genCounters, stop *atomic.Bool, portNext *atomic.Uint32) error {
	q := w * 7919
	id := uint16(w << 12)
	pkt := make([]byte, 512)
	buf := make([]byte, 1500)
	dst := sockaddr(netip.AddrPortFrom(s.Dst, 53))
	for !stop.Load() {
		port := 1024 + portNext.Add(1)%(65536-1024)
		fd, err := udpSocket(s.Dst, s.Timeout)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(s.Src, uint16(port)))); err != nil {
			unix.Close(fd)
			c.errs.Add(1) // port still in use by another worker: skip it
			continue
		}
		if err := unix.Connect(fd, dst); err != nil {
			unix.Close(fd)
			return err
		}
		b := s.Queries[q%len(s.Queries)]
		q++
		id++
		n := copy(pkt, b)
		binary.BigEndian.PutUint16(pkt, id)
		if rawWrite(fd, pkt[:n]) != 0 {
			c.errs.Add(1)
			unix.Close(fd)
			continue
		}
		c.sent.Add(1)
		for {
			n, err := rawRead(fd, buf)
			if err == unix.EINTR {
				continue
			}
			if err == 0 && n >= 12 && buf[2]&0x80 != 0 {
				c.answered.Add(1)
			}
			break
		}
		unix.Close(fd)
	}
	return nil
}

// specFor is a run against one side of the topology.
func specFor(t *topo, sd side, f harness.Family, mode string, queries [][]byte, cfg config) genSpec {
	s := genSpec{
		NS: t.Client, Src: sd.client(f), Dst: sd.listen(f), Mode: mode, Queries: queries,
		Warmup: cfg.Warmup, Duration: cfg.PairDur,
		Sockets: 4, InFlight: 8, Timeout: 100 * time.Millisecond,
		Rate: cfg.BlockedRate,
	}
	if mode == modeBlocked {
		s.Sockets = 1 // one paced sender is plenty and wakes up least
	}
	return s
}
