//go:build linux

package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/miekg/dns"
)

// NamePrefix starts the name of every namespace the harness creates. Names
// go on with the creating process's pid and a random part, so parallel runs
// never collide and stale ones can be told apart (see RemoveStale).
const NamePrefix = "nftdns-t-"

// Address plan. Everything comes from the benchmarking range 198.18.0.0/15
// and the documentation range 2001:db8::/32, so nothing here can clash with
// a real network.
//
//	client   eth0 198.18.1.2/24 2001:db8:1::2/64 ── cli0 198.18.1.1 2001:db8:1::1 (listen)  ┐
//	outsider eth0 198.18.3.2/24 2001:db8:3::2/64 ── out0 198.18.3.1 2001:db8:3::1            ├ box
//	upstream eth0 198.18.2.11-13  2001:db8:2::11-13 ── up0 198.18.2.1 2001:db8:2::1 (masq)  ┘
var (
	ClientNet4   = netip.MustParsePrefix("198.18.1.0/24")
	ClientNet6   = netip.MustParsePrefix("2001:db8:1::/64")
	UpstreamNet4 = netip.MustParsePrefix("198.18.2.0/24")
	UpstreamNet6 = netip.MustParsePrefix("2001:db8:2::/64")
	OutsideNet4  = netip.MustParsePrefix("198.18.3.0/24")
	OutsideNet6  = netip.MustParsePrefix("2001:db8:3::/64")

	Listen4     = netip.MustParseAddr("198.18.1.1") // the box, client side
	Listen6     = netip.MustParseAddr("2001:db8:1::1")
	ClientAddr4 = netip.MustParseAddr("198.18.1.2")
	ClientAddr6 = netip.MustParseAddr("2001:db8:1::2")
	BoxUp4      = netip.MustParseAddr("198.18.2.1") // the box, upstream side: masquerade source
	BoxUp6      = netip.MustParseAddr("2001:db8:2::1")
	BoxOut4     = netip.MustParseAddr("198.18.3.1") // the box, outsider side
	BoxOut6     = netip.MustParseAddr("2001:db8:3::1")
	Outsider4   = netip.MustParseAddr("198.18.3.2")
	Outsider6   = netip.MustParseAddr("2001:db8:3::2")
)

// Interface names. They are local to each namespace (veth pairs are created
// directly inside the namespaces), so fixed names cannot collide.
const (
	BoxClientIf   = "cli0"
	BoxUpstreamIf = "up0"
	BoxOutsideIf  = "out0"
	peerIf        = "eth0"
)

// Upstream is one DNS resolver in the upstream namespace.
type Upstream struct {
	ID int        // 1-based; answers carry it (A 192.0.2.ID, TXT "upstream-ID")
	V4 netip.Addr // 198.18.2.(10+ID)
	V6 netip.Addr // 2001:db8:2::(0x10+ID) printed as ::11, ::12, ...
}

// Addr returns the upstream's address of the given family.
func (u Upstream) Addr(f Family) netip.Addr {
	if f == V6 {
		return u.V6
	}
	return u.V4
}

// Name is the identity the upstream answers with, e.g. "upstream-2".
func (u Upstream) Name() string { return "upstream-" + strconv.Itoa(u.ID) }

// Family is an IP version.
type Family int

// The two families.
const (
	V4 Family = 4
	V6 Family = 6
)

func (f Family) String() string {
	if f == V6 {
		return "ipv6"
	}
	return "ipv4"
}

// Families and Protos list what the tests iterate over.
var (
	Families = []Family{V4, V6}
	Protos   = []Proto{UDP, TCP}
)

// Proto is a transport protocol for DNS.
type Proto string

// The two transports.
const (
	UDP Proto = "udp"
	TCP Proto = "tcp"
)

// Topology is a set of namespaces wired as client, outsider and upstream
// networks around a box. Create it with New and always Close it.
type Topology struct {
	ID       string // unique part shared by all namespace names
	Client   string // namespace names, usable as `ip netns exec NAME` and `nftdns --netns NAME`
	Box      string
	Upstream string
	Outsider string

	Upstreams []Upstream
	Log       *QueryLog // every DNS query the upstream servers received
	Probes    *ProbeLog // every non-DNS probe that arrived upstream

	mu        sync.Mutex
	servers   map[int][]*dns.Server // running DNS servers by upstream id
	closers   []func() error
	created   []string
	closeOnce sync.Once
	closeErr  error
}

// NumUpstreams is how many resolvers the upstream namespace runs.
const NumUpstreams = 3

// Listen returns the box's listen address of a family.
func Listen(f Family) netip.Addr {
	if f == V6 {
		return Listen6
	}
	return Listen4
}

// New creates the namespaces, links, addresses and routes, turns on
// forwarding in the box (only there), and starts the DNS servers and probe
// listeners in the upstream namespace. On error everything created so far
// is removed again.
func New(ctx context.Context) (t *Topology, err error) {
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	id := fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(rnd[:]))
	t = &Topology{
		ID:       id,
		Client:   NamePrefix + id + "-cli",
		Box:      NamePrefix + id + "-box",
		Upstream: NamePrefix + id + "-up",
		Outsider: NamePrefix + id + "-out",
		Log:      newQueryLog(),
		Probes:   newProbeLog(),
	}
	for i := 1; i <= NumUpstreams; i++ {
		t.Upstreams = append(t.Upstreams, Upstream{
			ID: i,
			V4: netip.AddrFrom4([4]byte{198, 18, 2, byte(10 + i)}),
			V6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 2, 15: byte(0x10 + i)}),
		})
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
			t = nil
		}
	}()
	if err := t.build(ctx); err != nil {
		return nil, err
	}
	if err := t.startServers(); err != nil {
		return nil, err
	}
	if err := t.startProbeListeners(); err != nil {
		return nil, err
	}
	return t, nil
}

// ip runs `ip -n NS args...`.
func ip(ctx context.Context, ns string, args ...string) error {
	_, err := must(ctx, "", "ip", append([]string{"-n", ns}, args...)...)
	return err
}

// sysctl sets kernel parameters inside a namespace only.
func sysctl(ctx context.Context, ns string, kv ...string) error {
	_, err := must(ctx, "", "ip", append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, kv...)...)
	return err
}

func (t *Topology) build(ctx context.Context) error {
	all := []string{t.Box, t.Client, t.Upstream, t.Outsider}
	for _, ns := range all {
		if _, err := must(ctx, "", "ip", "netns", "add", ns); err != nil {
			return err
		}
		t.mu.Lock()
		t.created = append(t.created, ns)
		t.mu.Unlock()
		// No duplicate address detection: a tentative IPv6 address
		// cannot be bound or used as a source, which makes tests flake.
		if err := sysctl(ctx, ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"); err != nil {
			return err
		}
		if err := ip(ctx, ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	// Forwarding in the box only; the other namespaces are end hosts.
	if err := sysctl(ctx, t.Box, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}

	type side struct {
		ns, boxIf    string
		box4, box6   netip.Addr
		bits4, bits6 int
		peer4, peer6 []netip.Addr
	}
	var up4, up6 []netip.Addr
	for _, u := range t.Upstreams {
		up4, up6 = append(up4, u.V4), append(up6, u.V6)
	}
	sides := []side{
		{t.Client, BoxClientIf, Listen4, Listen6, 24, 64, []netip.Addr{ClientAddr4}, []netip.Addr{ClientAddr6}},
		{t.Upstream, BoxUpstreamIf, BoxUp4, BoxUp6, 24, 64, up4, up6},
		{t.Outsider, BoxOutsideIf, BoxOut4, BoxOut6, 24, 64, []netip.Addr{Outsider4}, []netip.Addr{Outsider6}},
	}
	for _, s := range sides {
		// Created inside the box with the peer moved straight into the
		// other namespace: nothing ever appears in the root namespace.
		if err := ip(ctx, t.Box, "link", "add", s.boxIf, "type", "veth", "peer", "name", peerIf, "netns", s.ns); err != nil {
			return err
		}
		steps := [][]string{
			{t.Box, "addr", "add", fmt.Sprintf("%s/%d", s.box4, s.bits4), "dev", s.boxIf},
			{t.Box, "addr", "add", fmt.Sprintf("%s/%d", s.box6, s.bits6), "dev", s.boxIf, "nodad"},
			{t.Box, "link", "set", s.boxIf, "up"},
		}
		for _, a := range s.peer4 {
			steps = append(steps, []string{s.ns, "addr", "add", fmt.Sprintf("%s/%d", a, s.bits4), "dev", peerIf})
		}
		for _, a := range s.peer6 {
			steps = append(steps, []string{s.ns, "addr", "add", fmt.Sprintf("%s/%d", a, s.bits6), "dev", peerIf, "nodad"})
		}
		steps = append(steps,
			[]string{s.ns, "link", "set", peerIf, "up"},
			// Default routes via the box, so that if the box did
			// forward something it should not, the packet would
			// really get there and a test would see it.
			[]string{s.ns, "-4", "route", "add", "default", "via", s.box4.String()},
			[]string{s.ns, "-6", "route", "add", "default", "via", s.box6.String()},
		)
		for _, st := range steps {
			if err := ip(ctx, st[0], st[1:]...); err != nil {
				return err
			}
		}
	}
	return nil
}

// addCloser registers cleanup to run at Close, before the namespaces go.
func (t *Topology) addCloser(f func() error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closers = append(t.closers, f)
}

// Close stops the servers, kills every process still running inside the
// namespaces and deletes them. It is safe to call more than once and after
// a failed New. Sockets are closed first because an open socket keeps its
// namespace alive after `ip netns delete`.
func (t *Topology) Close() error {
	t.closeOnce.Do(func() {
		ctx := context.Background()
		t.mu.Lock()
		closers, created := t.closers, t.created
		t.closers, t.created = nil, nil
		t.mu.Unlock()
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			if err := closers[i](); err != nil {
				errs = append(errs, err)
			}
		}
		for _, ns := range created {
			errs = append(errs, killInside(ctx, ns))
			if _, err := must(ctx, "", "ip", "netns", "delete", ns); err != nil {
				errs = append(errs, err)
			}
		}
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// killInside kills the processes in a namespace we created (e.g. a dig that
// outlived its test). They can only be ours: nobody else knows the name.
func killInside(ctx context.Context, ns string) error {
	out, err := must(ctx, "", "ip", "netns", "pids", ns)
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return nil
}

// RemoveStale deletes harness namespaces left behind by processes that no
// longer exist (a run killed before its cleanup). Namespaces of live
// processes, including parallel runs, are left alone.
func RemoveStale(ctx context.Context) error {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), NamePrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(name, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat("/proc/" + pidStr); err == nil || pid == os.Getpid() {
			continue
		}
		errs = append(errs, killInside(ctx, e.Name()))
		if _, err := must(ctx, "", "ip", "netns", "delete", e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
