//go:build linux

package nft

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ackTimeout bounds the wait for acknowledgements. The kernel processes a
// batch inside sendmsg, so every answer is queued before the send returns;
// the timeout only matters if answers were lost.
const ackTimeout = 10 * time.Second

// Per-message receive buffer budget: one acknowledgement skb (with
// NETLINK_CAP_ACK, no copy of the request) has a truesize below 1 KiB.
const (
	ackBufferPerMsg = 2048
	minReadBuffer   = 1 << 20
	writeMargin     = 64 << 10
)

// errUnknown marks failures after which the batch may or may not have been
// committed: acknowledgements were lost (ENOBUFS, DESIGN §5.3) or never came.
var errUnknown = errors.New("outcome unknown")

// answerError returns the OpError of an error answer of the kernel (as
// opposed to a failing system call), or nil. Its Err is the errno and its
// Sequence that of the request.
func answerError(err error) *netlink.OpError {
	var oe *netlink.OpError
	if errors.As(err, &oe) {
		if _, ok := oe.Err.(unix.Errno); ok {
			return oe
		}
	}
	return nil
}

// setupSocket sets NETLINK_CAP_ACK: error acks then do not echo the
// request, which for a failing element chunk would be 60 KiB each.
// NETLINK_EXT_ACK stays off: mdlayher/netlink v1.11.2 ignores NLM_F_CAPPED
// when it looks for the extended-ack TLVs and then reports "not enough data
// for netlink error code" instead of the errno (nf_tables rarely sends a
// message text anyway).
func (c *Conn) setupSocket(nc *netlink.Conn) error {
	if !c.realSocket {
		return nil
	}
	if err := nc.SetOption(netlink.CapAcknowledge, true); err != nil {
		return fmt.Errorf("set NETLINK_CAP_ACK: %w", err)
	}
	return nil
}

// sizeBuffers makes room for a batch of bytes in msgs messages: the whole
// batch goes out in one sendmsg, which fails with EMSGSIZE above the send
// buffer (DESIGN §5.2), and each message gets an ack that must fit in the
// receive buffer, else the kernel drops acks and reports ENOBUFS although
// it committed (DESIGN §5.3). As root, SO_SNDBUFFORCE/SO_RCVBUFFORCE
// override net.core.{w,r}mem_max.
func (c *Conn) sizeBuffers(nc *netlink.Conn, bytes, msgs int) error {
	if !c.realSocket {
		return nil
	}
	if err := nc.SetWriteBuffer(bytes + writeMargin); err != nil {
		return fmt.Errorf("set send buffer: %w", err)
	}
	rb := max(msgs*ackBufferPerMsg, minReadBuffer)
	if c.testReadBuffer > 0 {
		rb = c.testReadBuffer
	}
	if err := nc.SetReadBuffer(rb); err != nil {
		return fmt.Errorf("set receive buffer: %w", err)
	}
	return nil
}

// request sends one request with NLM_F_ACK and returns the replies that came
// before the acknowledgement.
func request(nc *netlink.Conn, m netlink.Message) ([]netlink.Message, error) {
	m.Header.Flags |= netlink.Request | netlink.Acknowledge
	sent, err := nc.Send(m)
	if err != nil {
		return nil, err
	}
	_ = nc.SetReadDeadline(time.Now().Add(ackTimeout))
	var out []netlink.Message
	for {
		msgs, err := nc.Receive()
		if err != nil {
			oe := answerError(err)
			if oe == nil {
				return nil, err
			}
			if oe.Sequence == sent.Header.Sequence {
				return nil, oe.Err
			}
			continue // an answer to an earlier request
		}
		for _, r := range msgs {
			if r.Header.Sequence != sent.Header.Sequence {
				continue
			}
			if r.Header.Type == netlink.Error {
				return out, nil
			}
			out = append(out, r)
		}
	}
}

// dump sends a dump request and returns every reply.
func dump(nc *netlink.Conn, m netlink.Message) ([]netlink.Message, error) {
	m.Header.Flags |= netlink.Request | netlink.Dump
	if _, err := nc.Send(m); err != nil {
		return nil, err
	}
	_ = nc.SetReadDeadline(time.Now().Add(ackTimeout))
	msgs, err := nc.Receive()
	if err != nil {
		if oe := answerError(err); oe != nil {
			return nil, oe.Err
		}
		return nil, err
	}
	return msgs, nil
}

// getGen reads the ruleset generation id (NFT_MSG_GETGEN). google/nftables
// v0.3.0 parses NEWGEN messages only for its monitor, unexported.
func getGen(nc *netlink.Conn) (uint32, error) {
	replies, err := request(nc, netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_GETGEN)},
		Data:   nfgenmsg(unix.AF_UNSPEC, 0),
	})
	if err != nil {
		return 0, fmt.Errorf("get generation: %w", err)
	}
	for _, r := range replies {
		if r.Header.Type != msgType(unix.NFT_MSG_NEWGEN) || len(r.Data) < 4 {
			continue
		}
		var id uint32
		var found bool
		err := walkAttrs(r.Data[4:], func(typ uint16, data []byte) error {
			if typ == unix.NFTA_GEN_ID && len(data) == 4 {
				id, found = binaryutil.BigEndian.Uint32(data), true
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("get generation: %w", err)
		}
		if found {
			return id, nil
		}
	}
	return 0, errors.New("get generation: no NFTA_GEN_ID in the answer")
}

// nextGen is the generation after one commit: the kernel increments it and
// skips 0, which means "no check" in NFNL_BATCH_GENID.
func nextGen(g uint32) uint32 {
	if g++; g == 0 {
		g = 1
	}
	return g
}

// txFailure is a transaction the kernel refused: nothing was applied.
type txFailure struct {
	desc   string // the first message that failed, or "batch"
	err    error
	others int // further messages that failed
}

func (e *txFailure) Error() string {
	s := fmt.Sprintf("%s: %v", e.desc, e.err)
	if e.others > 0 {
		s += fmt.Sprintf(" (and %d more failed messages)", e.others)
	}
	return s
}

func (e *txFailure) Unwrap() error { return e.err }

// sendBatch sends msgs as one nf_tables transaction and waits for the
// kernel's verdict. With genid != 0 the batch-begin message carries
// NFNL_BATCH_GENID, and the kernel refuses the whole batch with ERESTART if
// the ruleset generation is no longer genid (google/nftables v0.3.0 cannot
// send this attribute, hence our own batch framing).
//
// It returns nil when the kernel committed, a *txFailure when it refused
// (nothing applied) and an error wrapping errUnknown when the answer was
// lost.
func sendBatch(nc *netlink.Conn, msgs []batchMsg, genid uint32) error {
	beginData := nfgenmsg(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	if genid != 0 {
		attr, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFNL_BATCH_GENID, Data: binaryutil.BigEndian.PutUint32(genid)},
		})
		if err != nil {
			return err
		}
		beginData = append(beginData, attr...)
	}
	all := make([]netlink.Message, 0, len(msgs)+2)
	all = append(all, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   beginData,
	})
	for _, m := range msgs {
		all = append(all, m.msg)
	}
	all = append(all, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
		Data:   nfgenmsg(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
	})

	sent, err := nc.SendMessages(all)
	if err != nil {
		// The kernel processes a batch inside sendmsg; a failed send never
		// reached it.
		if errors.Is(err, unix.EMSGSIZE) {
			return &txFailure{desc: "send batch", err: fmt.Errorf("%w (batch larger than the socket send buffer)", err)}
		}
		return &txFailure{desc: "send batch", err: err}
	}

	// Every message but begin and end asked for an ack; match them by
	// sequence number.
	pending := make(map[uint32]int, len(msgs))
	for i := range msgs {
		pending[sent[i+1].Header.Sequence] = i
	}
	beginSeq, endSeq := sent[0].Header.Sequence, sent[len(sent)-1].Header.Sequence
	var fail *txFailure
	_ = nc.SetReadDeadline(time.Now().Add(ackTimeout))
	for len(pending) > 0 {
		replies, err := nc.Receive()
		if err != nil {
			oe := answerError(err)
			if oe == nil {
				if fail != nil {
					// One refused message aborts the whole batch, whatever
					// became of the other acks.
					return fail
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					err = fmt.Errorf("%d acknowledgements missing: %w", len(pending), err)
				}
				return fmt.Errorf("%w: %w", errUnknown, err)
			}
			if oe.Sequence == beginSeq || oe.Sequence == endSeq {
				// A verdict on the whole batch (generation mismatch, or a
				// commit that failed): sent before any per-message ack.
				return &txFailure{desc: "batch", err: oe.Err}
			}
			i, ok := pending[oe.Sequence]
			if !ok {
				continue
			}
			delete(pending, oe.Sequence)
			if fail == nil {
				fail = &txFailure{desc: msgs[i].desc, err: oe.Err}
			} else {
				fail.others++
			}
			continue
		}
		for _, r := range replies {
			if r.Header.Type == netlink.Error {
				delete(pending, r.Header.Sequence)
			}
		}
	}
	if fail != nil {
		return fail
	}
	return nil
}
