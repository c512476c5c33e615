package cli

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/cmd/nftdns/watch"
	"nftdns/rules"
)

// fakeSource hands out fixed records, then returns as if interrupted.
type fakeSource struct {
	records []watch.Record
	loss    bool
	closed  bool
}

func (f *fakeSource) Run(ctx context.Context, onRecord func(watch.Record), onLoss func()) error {
	for _, r := range f.records {
		onRecord(r)
	}
	if f.loss {
		onLoss()
	}
	return nil
}

func (f *fakeSource) Close() error { f.closed = true; return nil }

// udpQuery is a network-layer UDP DNS query from src to dst.
func udpQuery(t *testing.T, src, dst netip.AddrPort, name string, typ uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, typ)
	msg, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	udp := make([]byte, 8, 8+len(msg))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(msg)))
	udp = append(udp, msg...)
	if src.Addr().Is4() {
		ip := make([]byte, 20, 20+len(udp))
		ip[0], ip[9] = 0x45, 17
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		return append(ip, udp...)
	}
	ip := make([]byte, 40, 40+len(udp))
	ip[0], ip[6] = 0x60, 17
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(ip, udp...)
}

// runWatch runs the CLI with a fake nflog source and reports what it was
// asked to subscribe to.
func (h *harness) runWatch(src *fakeSource, srcErr error, args ...string) (code int, stdout, stderr, netns string, group uint16) {
	h.t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, open: h.k.opener, now: time.Now,
		listen: func(ns string, g uint16) (logSource, error) {
			netns, group = ns, g
			if srcErr != nil {
				return nil, srcErr
			}
			return src, nil
		}}
	code = run(context.Background(), append([]string{"nftdns", "watch"}, args...), e)
	return code, out.String(), errb.String(), netns, group
}

func TestWatchOutput(t *testing.T) {
	h := newHarness(t)
	list0, list1 := h.write("a.txt", "a.example\n"), h.write("b.txt", "b.example\n")
	if code, _, stderr := h.apply("--nflog-group", "9", "--action", "log", "--blocklist", list0, "--blocklist", list1); code != 0 {
		t.Fatalf("apply: %s", stderr)
	}
	at := time.Date(2025, 6, 1, 12, 0, 0, 123e6, time.UTC)
	src := &fakeSource{loss: true, records: []watch.Record{
		{Time: at, Prefix: rules.LogPrefix("log", 1), Payload: udpQuery(t, netip.MustParseAddrPort("198.18.0.7:4242"), netip.MustParseAddrPort("198.18.0.1:53"), "b.example.", dns.TypeA)},
		{Time: at, Prefix: rules.LogPrefix("nxdomain", 0), Payload: udpQuery(t, netip.MustParseAddrPort("[2001:db8::7]:5353"), netip.MustParseAddrPort("[2001:db8::1]:53"), "a.example.", dns.TypeAAAA)},
		{Time: at, Prefix: "someone else: ", Payload: []byte{0x45, 0}},
	}}

	code, stdout, stderr, netns, group := h.runWatch(src, nil, "--state-dir", h.stateDir)
	if code != 0 || group != 9 || netns != "" || !src.closed {
		t.Fatalf("watch: code %d group %d netns %q closed %v; stderr %s", code, group, netns, src.closed, stderr)
	}
	wantLines := []string{
		"2025-06-01T12:00:00.123Z 198.18.0.7:4242 b.example. A udp log list 1 (" + list1 + ")",
		"2025-06-01T12:00:00.123Z [2001:db8::7]:5353 a.example. AAAA udp nxdomain list 0 (" + list0 + ")",
		`2025-06-01T12:00:00.123Z - undecodable packet (ipv4: 2 bytes, want at least 20) prefix "someone else: " list ?`,
	}
	if got := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n"); strings.Join(got, "\n") != strings.Join(wantLines, "\n") {
		t.Errorf("text output:\n%s\nwant:\n%s", stdout, strings.Join(wantLines, "\n"))
	}
	if !strings.Contains(stderr, "watching nflog group 9") || !strings.Contains(stderr, "lost") {
		t.Errorf("stderr %q: want the group and the loss notice", stderr)
	}

	_, stdout, _, _, _ = h.runWatch(src, nil, "--state-dir", h.stateDir, "--json", "--netns", "elsewhere", "--nflog-group", "12")
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("json: %d lines, want 3:\n%s", len(lines), stdout)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"time": "2025-06-01T12:00:00.123Z", "client": "198.18.0.7", "client_port": 4242.0, "server": "198.18.0.1",
		"server_port": 53.0, "name": "b.example.", "type": "A", "proto": "udp", "action": "log", "list": 1.0, "list_path": list1,
		"prefix": "nftdns log list 1: "}
	if fmt.Sprint(first) != fmt.Sprint(want) {
		t.Errorf("json line\n%v\nwant\n%v", first, want)
	}
	var third watchJSON
	if err := json.Unmarshal([]byte(lines[2]), &third); err != nil || third.Error == "" || third.List != nil || third.Action != "" {
		t.Errorf("undecodable record as json: %s (%v)", lines[2], err)
	}
}

func TestWatchGroup(t *testing.T) {
	tests := []struct {
		name      string
		applyWith []string // nil: no generation
		args      []string
		code      int
		group     uint16
		netns     string
		inStderr  string
	}{
		{name: "no generation, no flag", args: nil, code: 2, inStderr: "give --nflog-group"},
		{name: "no generation, flag", args: []string{"--nflog-group", "5", "--netns", "ns1"}, group: 5, netns: "ns1"},
		{name: "kernel log generation", applyWith: []string{}, code: 2, inStderr: "re-apply with --nflog-group"},
		{name: "kernel log generation, flag wins", applyWith: []string{}, args: []string{"--nflog-group", "3"}, group: 3},
		{name: "group from generation", applyWith: []string{"--nflog-group", "77"}, group: 77},
		{name: "group 0", args: []string{"--nflog-group", "0"}, code: 2, inStderr: "want 1 to 65535"},
		{name: "group too big", args: []string{"--nflog-group", "70000"}, code: 2, inStderr: "want 1 to 65535"},
		{name: "stray argument", args: []string{"x"}, code: 2, inStderr: `unexpected argument "x"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if tc.applyWith != nil {
				if code, _, stderr := h.apply(append(tc.applyWith, "--blocklist", h.write("a.txt", "a.example\n"))...); code != 0 {
					t.Fatalf("apply: %s", stderr)
				}
			}
			code, _, stderr, netns, group := h.runWatch(&fakeSource{}, nil, append([]string{"--state-dir", h.stateDir}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.inStderr) {
				t.Fatalf("code %d stderr %q, want %d and %q", code, stderr, tc.code, tc.inStderr)
			}
			if code == 0 && (group != tc.group || netns != tc.netns) {
				t.Errorf("subscribed to group %d netns %q, want %d %q", group, netns, tc.group, tc.netns)
			}
		})
	}
}

func TestWatchBusy(t *testing.T) {
	h := newHarness(t)
	code, _, stderr, _, _ := h.runWatch(nil, fmt.Errorf("nflog group 4: %w", watch.ErrGroupBusy), "--state-dir", h.stateDir, "--nflog-group", "4")
	if code != 1 || !strings.Contains(stderr, "already has a listener") {
		t.Errorf("code %d stderr %q", code, stderr)
	}
}
