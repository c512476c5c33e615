package rules

import (
	"net/netip"
	"strings"
	"testing"
)

func actionSettings() Settings {
	return Settings{
		Listen:     []netip.Addr{netip.MustParseAddr("198.18.1.1")},
		Upstreams:  []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:53")},
		Clients:    []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
		Interfaces: []string{"cli0"},
	}
}

// TestPerListOutcome runs queries through the compiled chains with the IR
// interpreter: each name reaches its first list's outcome chain, and the
// answering action rewrites the header flags to an answer.
func TestPerListOutcome(t *testing.T) {
	lists := []*List{
		{Path: "a", Action: ActionDrop, Names: map[string]int{"dropped.example": 1, "both.example": 2}},
		{Path: "b", Action: ActionNXDomain, Names: map[string]int{"nx.example": 1, "both.example": 2, "x-abcdefghijklm.com": 3}},
		{Path: "c", Action: ActionLog, Names: map[string]int{"watched.example": 1}},
	}
	rs, err := Compile(actionSettings(), lists)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Aux) != 2 {
		t.Errorf("want ip and ip6 aux tables, got %d", len(rs.Aux))
	}
	for _, tc := range []struct {
		name, iif string
		list      int
		action    string
		flags     uint16 // after the run (UDP), for the answer
	}{
		{"dropped.example", "cli0", 0, ActionDrop, 0x0100},
		{"both.example", "cli0", 0, ActionDrop, 0x0100},
		{"nx.example", "cli0", 1, "answer", 0x8183},
		{"X-ABCDEFGHIJKLM.com", "cli0", 1, "answer", 0x8183}, // an ambiguous name, through its verify chain
		{"nx.example", "up0", 1, ActionDrop, 0x0100},         // not a client-facing interface: dropped
		{"watched.example", "cli0", 2, ActionLog, 0x0100},
		{"other.example", "cli0", -1, "", 0x0100},
	} {
		s := newSim(rs)
		s.iif = tc.iif
		pkt := udpQuery(appendWire(nil, strings.ToLower(tc.name)))
		copy(pkt[20:], appendWire(nil, tc.name)) // query in its own case
		if _, err := s.run("udp", pkt); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		flags := uint16(pkt[10])<<8 | uint16(pkt[11])
		if s.list != tc.list || s.action != tc.action || flags != tc.flags {
			t.Errorf("%s via %s: list %d action %q flags %#04x, want %d %q %#04x", tc.name, tc.iif, s.list, s.action, flags, tc.list, tc.action, tc.flags)
		}
		if tc.action == "answer" && (pkt[0] != 0 || pkt[1] != 53 || pkt[2] != 0x82 || pkt[3] != 0x35) {
			t.Errorf("%s: ports not swapped: % x", tc.name, pkt[:4])
		}
	}
}

func TestValidateLists(t *testing.T) {
	s := actionSettings()
	s.Interfaces = nil
	for _, tc := range []struct {
		global, list string
		want         string
	}{
		{"", "", ""},
		{ActionNXDomain, "", "--interface"},
		{"", ActionRefused, "--interface"},
		{"", "bounce", `action "bounce"`},
		{"bounce", "", `action "bounce"`},
	} {
		s.Action = tc.global
		_, err := Compile(s, []*List{{Path: "l", Action: tc.list, Names: map[string]int{"a.example": 1}}})
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q/%q: error %v, want %q", tc.global, tc.list, err, tc.want)
		}
	}
}

func TestLogPrefixRoundTrip(t *testing.T) {
	for _, a := range Actions {
		got, n, ok := ParseLogPrefix(LogPrefix(a, 7))
		if !ok || got != a || n != 7 {
			t.Errorf("%s: %q %d %v", a, got, n, ok)
		}
	}
}
