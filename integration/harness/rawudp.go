//go:build linux

package harness

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// RawReply is a UDP datagram caught by RawUDPExchange.
type RawReply struct {
	Src      netip.AddrPort
	Checksum uint16 // the UDP checksum field as received
	Payload  []byte
}

// RawUDPExchange sends payload from src:34567 to dst:53 over IPv4 through a
// raw socket in namespace ns, with a zero UDP checksum ("none") if
// zeroCsum, else a correct one, and returns the first UDP datagram from
// dst:53 back to that port, with its checksum field as received.
func RawUDPExchange(ctx context.Context, ns string, src, dst netip.Addr, payload []byte, zeroCsum bool, timeout time.Duration) (RawReply, error) {
	const sport = 34567
	var out RawReply
	err := Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		seg := UDPSegment(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, 53), payload)
		if zeroCsum {
			seg[6], seg[7] = 0, 0
		}
		if err := unix.Sendto(fd, seg, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		deadline := time.Now().Add(timeout)
		buf := make([]byte, 65536)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
			_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("receive: %w", err)
			}
			pkt := buf[:n]
			if n < 20 {
				continue
			}
			ihl := int(pkt[0]&0x0f) * 4
			if n < ihl+8 {
				continue
			}
			from, _ := netip.AddrFromSlice(pkt[12:16])
			udp := pkt[ihl:]
			if from != dst || binary.BigEndian.Uint16(udp[0:]) != 53 || binary.BigEndian.Uint16(udp[2:]) != sport {
				continue
			}
			out = RawReply{Src: netip.AddrPortFrom(from, 53), Checksum: binary.BigEndian.Uint16(udp[6:]), Payload: append([]byte(nil), udp[8:]...)}
			return nil
		}
		return errors.New("no reply")
	})
	return out, err
}
