//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"nftdns/integration/harness"
)

// nsPrefix starts the name of every namespace the benchmark creates; the pid
// follows, so stale ones of a killed run can be told from a live run's.
const nsPrefix = "nftdns-b-"

// Address plan: two identical boxes between one client namespace and one
// upstream namespace. Box A runs the "no filter" baseline (DNAT and
// masquerade only), box B runs the design under test; the load generator
// picks the box by destination address, so switching between the two sides
// of a pair costs nothing and the (possibly million-name) ruleset stays
// loaded. Only 198.18.0.0/15 and 2001:db8::/32.
//
//	client eth0 198.18.1.2 2001:db8:1::2 ── cli0 198.18.1.1 2001:db8:1::1  box A ── up0 198.18.2.1 2001:db8:2::1 ── eth0 upstream 198.18.2.11-13 2001:db8:2::11-13
//	client eth1 198.18.4.2 2001:db8:4::2 ── cli0 198.18.4.1 2001:db8:4::1  box B ── up0 198.18.5.1 2001:db8:5::1 ── eth1 upstream 198.18.5.2 2001:db8:5::2
var (
	upstreams4 = []netip.Addr{netip.MustParseAddr("198.18.2.11"), netip.MustParseAddr("198.18.2.12"), netip.MustParseAddr("198.18.2.13")}
	upstreams6 = []netip.Addr{netip.MustParseAddr("2001:db8:2::11"), netip.MustParseAddr("2001:db8:2::12"), netip.MustParseAddr("2001:db8:2::13")}
)

// side is one box as the client sees it.
type side struct {
	NS               string
	Listen4, Listen6 netip.Addr // the box's address toward the client
	Client4, Client6 netip.Addr // the client's address on that link
	Net4, Net6       netip.Prefix
}

func (s side) listen(f harness.Family) netip.Addr {
	if f == harness.V6 {
		return s.Listen6
	}
	return s.Listen4
}

func (s side) client(f harness.Family) netip.Addr {
	if f == harness.V6 {
		return s.Client6
	}
	return s.Client4
}

// topo is the benchmark's namespaces.
type topo struct {
	Client, Upstream string
	A, B             side // A: baseline, B: design under test
	created          []string
}

func newTopo(ctx context.Context) (t *topo, err error) {
	id := strconv.Itoa(os.Getpid())
	t = &topo{Client: nsPrefix + id + "-cli", Upstream: nsPrefix + id + "-up"}
	t.A = side{NS: nsPrefix + id + "-boxa",
		Listen4: netip.MustParseAddr("198.18.1.1"), Listen6: netip.MustParseAddr("2001:db8:1::1"),
		Client4: netip.MustParseAddr("198.18.1.2"), Client6: netip.MustParseAddr("2001:db8:1::2"),
		Net4: netip.MustParsePrefix("198.18.1.0/24"), Net6: netip.MustParsePrefix("2001:db8:1::/64")}
	t.B = side{NS: nsPrefix + id + "-boxb",
		Listen4: netip.MustParseAddr("198.18.4.1"), Listen6: netip.MustParseAddr("2001:db8:4::1"),
		Client4: netip.MustParseAddr("198.18.4.2"), Client6: netip.MustParseAddr("2001:db8:4::2"),
		Net4: netip.MustParsePrefix("198.18.4.0/24"), Net6: netip.MustParsePrefix("2001:db8:4::/64")}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
			t = nil
		}
	}()
	for _, ns := range []string{t.Client, t.Upstream, t.A.NS, t.B.NS} {
		if err := sh(ctx, "ip", "netns", "add", ns); err != nil {
			return nil, err
		}
		t.created = append(t.created, ns)
		if err := sh(ctx, "ip", "netns", "exec", ns, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
			"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
			return nil, err
		}
		if err := sh(ctx, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	for _, box := range []string{t.A.NS, t.B.NS} {
		if err := sh(ctx, "ip", "netns", "exec", box, "sysctl", "-q", "-w",
			"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
			return nil, err
		}
	}
	// A wide ephemeral range in the client: fresh-flow runs walk it.
	if err := sh(ctx, "ip", "netns", "exec", t.Client, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"); err != nil {
		return nil, err
	}
	steps := [][]string{
		// box A
		{t.A.NS, "link", "add", "cli0", "type", "veth", "peer", "name", "eth0", "netns", t.Client},
		{t.A.NS, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", t.Upstream},
		{t.A.NS, "addr", "add", "198.18.1.1/24", "dev", "cli0"},
		{t.A.NS, "addr", "add", "2001:db8:1::1/64", "dev", "cli0", "nodad"},
		{t.A.NS, "addr", "add", "198.18.2.1/24", "dev", "up0"},
		{t.A.NS, "addr", "add", "2001:db8:2::1/64", "dev", "up0", "nodad"},
		{t.A.NS, "link", "set", "cli0", "up"},
		{t.A.NS, "link", "set", "up0", "up"},
		// box B
		{t.B.NS, "link", "add", "cli0", "type", "veth", "peer", "name", "eth1", "netns", t.Client},
		{t.B.NS, "link", "add", "up0", "type", "veth", "peer", "name", "eth1", "netns", t.Upstream},
		{t.B.NS, "addr", "add", "198.18.4.1/24", "dev", "cli0"},
		{t.B.NS, "addr", "add", "2001:db8:4::1/64", "dev", "cli0", "nodad"},
		{t.B.NS, "addr", "add", "198.18.5.1/24", "dev", "up0"},
		{t.B.NS, "addr", "add", "2001:db8:5::1/64", "dev", "up0", "nodad"},
		{t.B.NS, "link", "set", "cli0", "up"},
		{t.B.NS, "link", "set", "up0", "up"},
		{t.B.NS, "route", "add", "198.18.2.0/24", "via", "198.18.5.2"},
		{t.B.NS, "-6", "route", "add", "2001:db8:2::/64", "via", "2001:db8:5::2"},
		// client
		{t.Client, "addr", "add", "198.18.1.2/24", "dev", "eth0"},
		{t.Client, "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"},
		{t.Client, "addr", "add", "198.18.4.2/24", "dev", "eth1"},
		{t.Client, "addr", "add", "2001:db8:4::2/64", "dev", "eth1", "nodad"},
		{t.Client, "link", "set", "eth0", "up"},
		{t.Client, "link", "set", "eth1", "up"},
		// upstream: the resolvers sit on eth0 (box A's side); box B
		// reaches them through eth1, whose address is its gateway.
		{t.Upstream, "addr", "add", "198.18.5.2/24", "dev", "eth1"},
		{t.Upstream, "addr", "add", "2001:db8:5::2/64", "dev", "eth1", "nodad"},
		{t.Upstream, "link", "set", "eth0", "up"},
		{t.Upstream, "link", "set", "eth1", "up"},
	}
	for i := range upstreams4 {
		steps = append(steps,
			[]string{t.Upstream, "addr", "add", upstreams4[i].String() + "/24", "dev", "eth0"},
			[]string{t.Upstream, "addr", "add", upstreams6[i].String() + "/64", "dev", "eth0", "nodad"})
	}
	for _, st := range steps {
		if err := sh(ctx, "ip", append([]string{"-n", st[0]}, st[1:]...)...); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Close kills whatever still runs inside the namespaces and deletes them.
func (t *topo) Close() error {
	var errs []error
	ctx := context.Background()
	for _, ns := range t.created {
		errs = append(errs, killInside(ctx, ns))
		errs = append(errs, sh(ctx, "ip", "netns", "delete", ns))
	}
	t.created = nil
	return errors.Join(errs...)
}

// conntrackTimeouts shortens UDP conntrack timeouts in the boxes, so the
// fresh-flow runs (a new source port per query) do not fill the table and a
// reused port finds no old entry. The sysctls exist once conntrack is
// loaded, i.e. after a NAT ruleset.
func (t *topo) conntrackTimeouts(ctx context.Context) error {
	for _, box := range []string{t.A.NS, t.B.NS} {
		if err := sh(ctx, "ip", "netns", "exec", box, "sysctl", "-q", "-w",
			"net.netfilter.nf_conntrack_udp_timeout=1", "net.netfilter.nf_conntrack_udp_timeout_stream=2"); err != nil {
			return err
		}
	}
	return nil
}

func killInside(ctx context.Context, ns string) error {
	res, err := harness.Run(ctx, "", "ip", "netns", "pids", ns)
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(res.Stdout) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			_ = killPid(pid)
		}
	}
	return nil
}

// removeStale deletes benchmark namespaces of processes that no longer
// exist (a run killed with SIGKILL).
func removeStale(ctx context.Context) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		if _, err := os.Stat("/proc/" + pidStr); err == nil || pidStr == strconv.Itoa(os.Getpid()) {
			continue
		}
		_ = killInside(ctx, e.Name())
		_ = sh(ctx, "ip", "netns", "delete", e.Name())
	}
}

// sh runs a command that must succeed.
func sh(ctx context.Context, name string, args ...string) error {
	_, err := shOut(ctx, "", name, args...)
	return err
}

func shOut(ctx context.Context, stdin, name string, args ...string) (string, error) {
	res, err := harness.Run(ctx, stdin, name, args...)
	if err != nil {
		return "", err
	}
	if res.Code != 0 {
		return "", fmt.Errorf("%s: exit %d: %s", strings.Join(res.Args, " "), res.Code, strings.TrimSpace(res.Stderr))
	}
	return res.Stdout, nil
}
