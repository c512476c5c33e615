//go:build linux

package nft

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrGenerationChanged means someone changed the ruleset between Apply's
// read of the generation id and its commit; the kernel refused the batch
// (ERESTART) and nothing was applied. Applying again is safe.
var ErrGenerationChanged = errors.New("ruleset changed concurrently")

// ErrNoTable means the table does not exist.
var ErrNoTable = errors.New("table does not exist")

// CounterValue is a named counter's value.
type CounterValue struct{ Packets, Bytes uint64 }

// Conn talks nf_tables netlink in one network namespace. Its methods may be
// called concurrently; Apply calls are serialised.
type Conn struct {
	mu sync.Mutex // serialises Apply and Flush

	ns         netns.NsHandle // kept open so the namespace stays reachable; -1 for none
	dial       func() (*netlink.Conn, error)
	realSocket bool // false for test connections: no socket options

	// Test hooks.
	beforeCommit   func()      // runs after the generation read, before the commit
	testReadBuffer int         // forces the receive buffer size, to provoke ENOBUFS
	onUnknown      func(error) // sees commit outcomes that had to be re-checked
	forceReplace   bool        // replace an existing table as a first Apply does, for comparisons
	flushAllSets   bool        // resend every kept set in full (flushed, or created again if big), as before set diffs, for comparisons
	onPlan         func(*plan) // sees every plan before it is sent
}

// OpenNetns opens the network namespace that --netns names: "" is the
// current one (-1, nothing to close), a value without '/' a namespace in
// /run/netns, anything else a path to a namespace file.
func OpenNetns(name string) (netns.NsHandle, error) {
	h := netns.NsHandle(-1)
	var err error
	switch {
	case name == "":
	case !strings.Contains(name, "/"):
		h, err = netns.GetFromName(name)
	default:
		h, err = netns.GetFromPath(name)
	}
	if err != nil {
		return -1, fmt.Errorf("open network namespace %q: %w", name, err)
	}
	return h, nil
}

// Open returns a Conn for the network namespace netns: "" is the current
// namespace, a value without '/' names a namespace in /run/netns, anything
// else is a path to a namespace file. The namespace stays open until Close.
func Open(netnsName string) (*Conn, error) {
	h, err := OpenNetns(netnsName)
	if err != nil {
		return nil, err
	}
	fd := 0 // netlink.Config: 0 is the calling thread's namespace
	if h != -1 {
		fd = int(h)
	}
	c := newConn(func() (*netlink.Conn, error) {
		return netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: fd})
	})
	c.ns = h
	c.realSocket = true
	// Fail now rather than on first use if we may not talk nf_tables.
	nc, err := c.connect()
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = nc.Close()
	return c, nil
}

// newConn returns a Conn that gets its sockets from dial; tests pass
// nltest.Dial connections.
func newConn(dial func() (*netlink.Conn, error)) *Conn {
	return &Conn{ns: -1, dial: dial}
}

// Close releases the namespace handle.
func (c *Conn) Close() error {
	if c.ns == -1 {
		return nil
	}
	err := c.ns.Close()
	c.ns = -1
	return err
}

// connect opens a fresh NETLINK_NETFILTER socket. Every operation uses its
// own: after lost acks (ENOBUFS) a socket's queue no longer matches its
// requests.
func (c *Conn) connect() (*netlink.Conn, error) {
	nc, err := c.dial()
	if err != nil {
		return nil, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	if err := c.setupSocket(nc); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return nc, nil
}

// withSocket runs fn with a fresh socket, closing it when ctx ends.
func (c *Conn) withSocket(ctx context.Context, fn func(nc *netlink.Conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	nc, err := c.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	err = fn(nc)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// tableInfo is what Apply needs to know about an existing table.
type tableInfo struct {
	handle  uint64
	comment string
}

// getTable reads inet <name>; nil without error if it does not exist.
func getTable(nc *netlink.Conn, name string) (*tableInfo, error) {
	return getTableFamily(nc, unix.NFPROTO_INET, name)
}

// getTableFamily reads the table of a family; nil if it does not exist.
func getTableFamily(nc *netlink.Conn, family uint8, name string) (*tableInfo, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: cstr(name)}})
	if err != nil {
		return nil, err
	}
	replies, err := request(nc, netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_GETTABLE)},
		Data:   append(nfgenmsg(family, 0), attrs...),
	})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get table %q: %w", name, err)
	}
	for _, r := range replies {
		if r.Header.Type != msgType(unix.NFT_MSG_NEWTABLE) || len(r.Data) < 4 {
			continue
		}
		t := &tableInfo{}
		err := walkAttrs(r.Data[4:], func(typ uint16, data []byte) error {
			switch typ {
			case nftaTableHandle:
				if len(data) == 8 {
					t.handle = binaryutil.BigEndian.Uint64(data)
				}
			case nftaTableUserdata:
				t.comment = udataString(data, udataTableComment)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("get table %q: %w", name, err)
		}
		return t, nil
	}
	return nil, fmt.Errorf("get table %q: no table in the answer", name)
}

// TableExists reports whether inet <table> exists.
func (c *Conn) TableExists(ctx context.Context, table string) (bool, error) {
	var t *tableInfo
	err := c.withSocket(ctx, func(nc *netlink.Conn) (err error) {
		t, err = getTable(nc, table)
		return err
	})
	return t != nil, err
}

// Flush deletes inet <table> and everything in it, and the ip and ip6
// tables of that name that nftdns uses to send in-kernel answers, and
// nothing else.
// existed is false (and err nil) when there was no such table.
func (c *Conn) Flush(ctx context.Context, table string) (existed bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	err = c.withSocket(ctx, func(nc *netlink.Conn) error {
		t, err := getTable(nc, table)
		if err != nil || t == nil {
			return err
		}
		b, err := newBuilder(table, "")
		if err != nil {
			return err
		}
		if err := b.add(fmt.Sprintf("delete table inet %s", table), unix.NFT_MSG_DELTABLE, 0,
			[]netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: cstr(table)}}); err != nil {
			return err
		}
		// The ip and ip6 tables of the same name that send in-kernel
		// answers, if any.
		if err := b.dropAuxTables(table, nil); err != nil {
			return err
		}
		err = sendBatch(nc, b.p.msgs, 0)
		switch {
		case err == nil:
			existed = true
		case errors.Is(err, unix.ENOENT):
			// Deleted by someone else since we looked.
		case errors.Is(err, errUnknown):
			// Lost ack: ask the kernel, on a fresh socket.
			nc2, err2 := c.connect()
			if err2 != nil {
				return fmt.Errorf("%w; re-check: %w", err, err2)
			}
			defer nc2.Close()
			t, err2 := getTable(nc2, table)
			if err2 != nil {
				return fmt.Errorf("%w; re-check: %w", err, err2)
			}
			if t != nil {
				return err
			}
			existed = true
		default:
			return err
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("flush table %q: %w", table, err)
	}
	return existed, nil
}

// Counters returns the named counter objects of inet <table> by name, or
// ErrNoTable.
func (c *Conn) Counters(ctx context.Context, table string) (map[string]CounterValue, error) {
	out := map[string]CounterValue{}
	err := c.withSocket(ctx, func(nc *netlink.Conn) error {
		t, err := getTable(nc, table)
		if err != nil {
			return err
		}
		if t == nil {
			return ErrNoTable
		}
		objs, err := readObjects(nc, table, unix.NFT_OBJECT_COUNTER)
		if err != nil {
			return err
		}
		for _, o := range objs {
			out[o.name] = o.value
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("counters of table %q: %w", table, err)
	}
	return out, nil
}

// LinkExists reports whether the Conn's namespace has a network interface
// of that name (an RTM_GETLINK by name on a route socket in the namespace).
func (c *Conn) LinkExists(ctx context.Context, name string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	fd := 0
	if c.ns != -1 {
		fd = int(c.ns)
	}
	nc, err := netlink.Dial(unix.NETLINK_ROUTE, &netlink.Config{NetNS: fd})
	if err != nil {
		return false, fmt.Errorf("route netlink: %w", err)
	}
	defer nc.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.IFLA_IFNAME, Data: cstr(name)}})
	if err != nil {
		return false, err
	}
	ifinfo := make([]byte, unix.SizeofIfInfomsg) // any family, index 0: look up by name
	_, err = nc.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETLINK, Flags: netlink.Request},
		Data:   append(ifinfo, attrs...),
	})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENODEV):
		return false, nil
	}
	return false, fmt.Errorf("look up interface %q: %w", name, err)
}
