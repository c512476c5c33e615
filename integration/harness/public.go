//go:build linux

package harness

import (
	"context"
	"fmt"
	"net/netip"
)

// A "public" resolver that clients may have hard-coded instead of the
// box's listen address. It lives in the upstream namespace, so the box
// really could forward queries to it: when it answers a client, the box
// let the query through unchanged.
var (
	Public4 = netip.MustParseAddr("203.0.113.53")
	Public6 = netip.MustParseAddr("2001:db8:53::53")
)

// PublicID is the identity the public resolver answers with (A
// 192.0.2.53, TXT "upstream-53") and logs under in Topology.Log.
const PublicID = 53

// Public returns the public resolver's address of a family.
func Public(f Family) netip.Addr {
	if f == V6 {
		return Public6
	}
	return Public4
}

// AddPublicResolver puts Public4 and Public6 on the upstream namespace's
// interface, routes them from the box through the upstream side (the
// client and outsider namespaces already route everything via the box),
// and starts a DNS server on them answering as PublicID.
func (t *Topology) AddPublicResolver(ctx context.Context) error {
	steps := [][]string{
		{t.Upstream, "addr", "add", Public4.String() + "/32", "dev", peerIf},
		{t.Upstream, "addr", "add", Public6.String() + "/128", "dev", peerIf, "nodad"},
		{t.Box, "-4", "route", "add", Public4.String() + "/32", "via", t.Upstreams[0].V4.String()},
		{t.Box, "-6", "route", "add", Public6.String() + "/128", "via", t.Upstreams[0].V6.String()},
	}
	for _, st := range steps {
		if err := ip(ctx, st[0], st[1:]...); err != nil {
			return fmt.Errorf("public resolver: %w", err)
		}
	}
	pub := Upstream{ID: PublicID, V4: Public4, V6: Public6}
	for _, f := range Families {
		servers, err := t.startServer(t.Upstream, pub, f)
		if err != nil {
			return err
		}
		for _, s := range servers {
			t.addCloser(s.Shutdown)
		}
	}
	return nil
}
