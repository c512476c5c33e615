//go:build linux

package watch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"nftdns/nft"
)

// nfnetlink_log protocol numbers (linux/netfilter/nfnetlink_log.h,
// nfnetlink.h). The library that wraps them (florianl/go-nflog) is not
// served by the module proxy this project uses; the part needed here is
// small.
const (
	nfnlSubsysULOG = 4
	msgPacket      = 0 // NFULNL_MSG_PACKET
	msgConfig      = 1 // NFULNL_MSG_CONFIG

	cfgCmd     = 1 // NFULA_CFG_CMD
	cfgMode    = 2 // NFULA_CFG_MODE
	cfgQThresh = 5 // NFULA_CFG_QTHRESH

	cmdBind = 1 // NFULNL_CFG_CMD_BIND

	copyPacket = 2      // NFULNL_COPY_PACKET
	copyRange  = 0xffff // the whole packet, up to the kernel's own cap

	attrTimestamp = 3  // NFULA_TIMESTAMP: be64 sec, be64 usec
	attrPayload   = 9  // NFULA_PAYLOAD: the network-layer packet
	attrPrefix    = 10 // NFULA_PREFIX: NUL-terminated log prefix

	nfgenmsgLen = 4 // family, version, be16 res_id (the group)
)

// Record is one packet the kernel logged to the group.
type Record struct {
	Time    time.Time // the packet's timestamp, or when it was read if the kernel gave none
	Family  uint8     // unix.AF_INET or unix.AF_INET6
	Group   uint16
	Prefix  string // the log statement's prefix
	Payload []byte // the network-layer packet, from its IP header
}

// Listener is a subscription to one nflog group in one network namespace.
// Only one socket per namespace may bind a group: a second gets EBUSY.
type Listener struct {
	c       *netlink.Conn
	ns      netns.NsHandle
	group   uint16
	pending []Record // packets that arrived before the bind's ack
}

// ErrGroupBusy means another program already listens on the group.
var ErrGroupBusy = errors.New("nflog group already has a listener")

// Listen subscribes to nflog group `group` in the network namespace netns
// ("" = the current one, a name in /run/netns, or a path). The socket is
// created inside the namespace (the netlink library locks the OS thread,
// enters it and switches back) and stays there. It asks for whole packets
// and for every packet to be sent at once, not batched.
func Listen(netnsName string, group uint16) (*Listener, error) {
	h, err := nft.OpenNetns(netnsName)
	if err != nil {
		return nil, err
	}
	fd := 0
	if h != -1 {
		fd = int(h)
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: fd})
	if err != nil {
		if h != -1 {
			h.Close()
		}
		return nil, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	l := &Listener{c: c, ns: h, group: group}
	// A burst of logged queries must not overflow the queue between two
	// reads; the log statement's rate limit bounds the rest.
	_ = c.SetReadBuffer(1 << 20)
	if err := l.bind(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// bind sends one config message: bind the group, copy whole packets, flush
// after every packet (the kernel default batches up to 100 packets or one
// second). No PF_BIND: nftables' `log group` reaches nfnetlink_log by its
// logger type, and PF_BIND would make nfnetlink_log the namespace's default
// logger for that family, a change nobody asked for that outlives us.
func (l *Listener) bind() error {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Bytes(cfgCmd, []byte{cmdBind})
	mode := make([]byte, 6) // be32 copy_range, u8 copy_mode, u8 pad
	binary.BigEndian.PutUint32(mode, copyRange)
	mode[4] = copyPacket
	ae.Bytes(cfgMode, mode)
	ae.Uint32(cfgQThresh, 1)
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, 0, 0, 0}
	binary.BigEndian.PutUint16(hdr[2:], l.group)
	req, err := l.c.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysULOG<<8 | msgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(hdr, attrs...),
	})
	if err != nil {
		return fmt.Errorf("nflog bind group %d: %w", l.group, err)
	}
	// Read up to the ack; a packet may already be queued in front of it.
	for range 64 {
		msgs, err := l.c.Receive()
		if err != nil {
			// The kernel answers EPERM when another socket owns the
			// group (EBUSY only when this one already does); EPERM also
			// means no CAP_NET_ADMIN, but the dial needed none.
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("nflog group %d: %w", l.group, ErrGroupBusy)
			}
			if errors.Is(err, unix.EPERM) {
				return fmt.Errorf("nflog group %d: %w (or no CAP_NET_ADMIN in the namespace)", l.group, ErrGroupBusy)
			}
			return fmt.Errorf("nflog bind group %d: %w", l.group, err)
		}
		for _, m := range msgs {
			if m.Header.Type == netlink.Error && m.Header.Sequence == req.Header.Sequence {
				return nil
			}
			if r, ok, err := parseRecord(m); err == nil && ok {
				l.pending = append(l.pending, r)
			}
		}
	}
	return fmt.Errorf("nflog bind group %d: no ack", l.group)
}

// Close ends the subscription; the kernel unbinds the group when the
// socket closes.
func (l *Listener) Close() error {
	err := l.c.Close()
	if l.ns != -1 {
		l.ns.Close()
		l.ns = -1
	}
	return err
}

// Run hands every logged packet to onRecord until ctx ends, then returns
// nil. When the socket's queue overflowed and packets were lost, onLoss is
// called (then reading goes on). Any other receive error ends Run.
func (l *Listener) Run(ctx context.Context, onRecord func(Record), onLoss func()) error {
	for _, r := range l.pending {
		onRecord(r)
	}
	l.pending = nil
	stop := context.AfterFunc(ctx, func() { _ = l.c.SetReadDeadline(time.Now()) })
	defer stop()
	for {
		msgs, err := l.c.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, unix.ENOBUFS) {
			if onLoss != nil {
				onLoss()
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("nflog receive: %w", err)
		}
		for _, m := range msgs {
			r, ok, err := parseRecord(m)
			if err != nil || !ok {
				continue // not a packet, or one we cannot read: skip it
			}
			if r.Time.IsZero() {
				r.Time = time.Now()
			}
			onRecord(r)
		}
	}
}

// parseRecord reads an NFULNL_MSG_PACKET message; ok is false for other
// message types.
func parseRecord(m netlink.Message) (Record, bool, error) {
	var r Record
	if m.Header.Type != netlink.HeaderType(nfnlSubsysULOG<<8|msgPacket) {
		return r, false, nil
	}
	if len(m.Data) < nfgenmsgLen {
		return r, false, errors.New("nflog packet: short header")
	}
	r.Family = m.Data[0]
	r.Group = binary.BigEndian.Uint16(m.Data[2:4])
	ad, err := netlink.NewAttributeDecoder(m.Data[nfgenmsgLen:])
	if err != nil {
		return r, false, fmt.Errorf("nflog packet: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case attrPrefix:
			r.Prefix = strings.TrimRight(string(ad.Bytes()), "\x00")
		case attrPayload:
			r.Payload = ad.Bytes()
		case attrTimestamp:
			if b := ad.Bytes(); len(b) == 16 {
				sec, usec := binary.BigEndian.Uint64(b[0:8]), binary.BigEndian.Uint64(b[8:16])
				if sec != 0 && sec < 1<<40 && usec < 1e6 {
					r.Time = time.Unix(int64(sec), int64(usec)*1000)
				}
			}
		}
	}
	if err := ad.Err(); err != nil {
		return r, false, fmt.Errorf("nflog packet: %w", err)
	}
	return r, true, nil
}
