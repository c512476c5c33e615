//go:build linux

package watch

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// packetMsg builds an NFULNL_MSG_PACKET message as the kernel sends it.
func packetMsg(t *testing.T, family byte, group uint16, attrs func(ae *netlink.AttributeEncoder)) netlink.Message {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	attrs(ae)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	hdr := []byte{family, 0, 0, 0}
	binary.BigEndian.PutUint16(hdr[2:], group)
	return netlink.Message{Header: netlink.Header{Type: nfnlSubsysULOG<<8 | msgPacket}, Data: append(hdr, b...)}
}

func TestParseRecord(t *testing.T) {
	t.Parallel()
	payload := []byte{0x45, 1, 2, 3}
	ts := make([]byte, 16)
	binary.BigEndian.PutUint64(ts[0:], 1_700_000_000)
	binary.BigEndian.PutUint64(ts[8:], 250_000)
	tests := []struct {
		name     string
		msg      netlink.Message
		want     Record
		ok       bool
		errorHas string
	}{
		{name: "full", ok: true,
			msg: packetMsg(t, unix.AF_INET, 7, func(ae *netlink.AttributeEncoder) {
				ae.Bytes(1, []byte{0x08, 0x00, 0, 0}) // NFULA_PACKET_HDR, ignored
				ae.Bytes(attrTimestamp, ts)
				ae.Bytes(attrPrefix, []byte("nftdns nxdomain list 2: \x00"))
				ae.Bytes(attrPayload, payload)
			}),
			want: Record{Time: time.Unix(1_700_000_000, 250_000_000), Family: unix.AF_INET, Group: 7, Prefix: "nftdns nxdomain list 2: ", Payload: payload}},
		{name: "no timestamp, no prefix", ok: true,
			msg:  packetMsg(t, unix.AF_INET6, 65535, func(ae *netlink.AttributeEncoder) { ae.Bytes(attrPayload, payload) }),
			want: Record{Family: unix.AF_INET6, Group: 65535, Payload: payload}},
		{name: "zero timestamp ignored", ok: true,
			msg:  packetMsg(t, unix.AF_INET, 1, func(ae *netlink.AttributeEncoder) { ae.Bytes(attrTimestamp, make([]byte, 16)) }),
			want: Record{Family: unix.AF_INET, Group: 1}},
		{name: "not a packet message", ok: false,
			msg: netlink.Message{Header: netlink.Header{Type: nfnlSubsysULOG<<8 | msgConfig}, Data: []byte{0, 0, 0, 1}}},
		{name: "short nfgenmsg", errorHas: "short header",
			msg: netlink.Message{Header: netlink.Header{Type: nfnlSubsysULOG<<8 | msgPacket}, Data: []byte{2, 0}}},
		{name: "broken attribute", errorHas: "nflog packet",
			msg: netlink.Message{Header: netlink.Header{Type: nfnlSubsysULOG<<8 | msgPacket}, Data: []byte{2, 0, 0, 1, 200, 0, 9, 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok, err := parseRecord(tc.msg)
			if tc.errorHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errorHas) {
					t.Fatalf("error %v, want one containing %q", err, tc.errorHas)
				}
				return
			}
			if err != nil || ok != tc.ok {
				t.Fatalf("parseRecord: ok %v err %v, want ok %v", ok, err, tc.ok)
			}
			if !ok {
				return
			}
			if !got.Time.Equal(tc.want.Time) || got.Family != tc.want.Family || got.Group != tc.want.Group ||
				got.Prefix != tc.want.Prefix || !bytes.Equal(got.Payload, tc.want.Payload) {
				t.Errorf("parseRecord = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// FuzzParseRecord: parseRecord never panics on any message body.
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte{2, 0, 0, 1, 8, 0, 10, 0, 'a', 'b', 'c', 0})
	f.Add([]byte{10, 0, 0, 1, 20, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, _ = parseRecord(netlink.Message{Header: netlink.Header{Type: nfnlSubsysULOG<<8 | msgPacket}, Data: data})
	})
}
