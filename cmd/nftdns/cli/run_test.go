package cli

import (
	"net/netip"
	"strings"
	"testing"

	"nftdns/rules"
)

func rrData(t *testing.T, rs *rules.Ruleset, set string) []string {
	t.Helper()
	var out []string
	for _, e := range rs.Set(set).Elements {
		u, ok := upstreamOf(e.Data, map[string]int{"rr4": 4, "rr6": 16}[set])
		if !ok {
			t.Fatalf("bad rr data %x", e.Data)
		}
		out = append(out, u.String())
	}
	return out
}

// TestRemapRR: the slots of upstreams that are down go to the healthy ones
// of the family in turn; a family with none healthy keeps its map; the
// compiled ruleset is not changed.
func TestRemapRR(t *testing.T) {
	t.Parallel()
	u := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	rs, err := rules.Compile(rules.Settings{
		Listen:    []netip.Addr{netip.MustParseAddr("198.18.0.1")},
		Upstreams: []netip.AddrPort{u("198.51.100.1:53"), u("198.51.100.2:53"), u("198.51.100.3:5353"), u("[2001:db8::1]:53")},
		Clients:   []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		down  []string
		rr4   string
		rr6   string
		share map[string]float64
	}{
		{"all up", nil, "198.51.100.1:53 198.51.100.2:53 198.51.100.3:5353", "[2001:db8::1]:53",
			map[string]float64{"198.51.100.1:53": 1.0 / 3, "198.51.100.3:5353": 1.0 / 3, "[2001:db8::1]:53": 1}},
		{"one down", []string{"198.51.100.2:53"}, "198.51.100.1:53 198.51.100.1:53 198.51.100.3:5353", "[2001:db8::1]:53",
			map[string]float64{"198.51.100.1:53": 2.0 / 3, "198.51.100.2:53": 0, "198.51.100.3:5353": 1.0 / 3}},
		{"two down", []string{"198.51.100.1:53", "198.51.100.3:5353"}, "198.51.100.2:53 198.51.100.2:53 198.51.100.2:53", "[2001:db8::1]:53",
			map[string]float64{"198.51.100.2:53": 1}},
		{"all of a family down keeps it", []string{"198.51.100.1:53", "198.51.100.2:53", "198.51.100.3:5353", "[2001:db8::1]:53"},
			"198.51.100.1:53 198.51.100.2:53 198.51.100.3:5353", "[2001:db8::1]:53", map[string]float64{"[2001:db8::1]:53": 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			down := map[netip.AddrPort]bool{}
			for _, d := range tc.down {
				down[u(d)] = true
			}
			out, share := remapRR(rs, func(a netip.AddrPort) bool { return !down[a] })
			if got := strings.Join(rrData(t, out, "rr4"), " "); got != tc.rr4 {
				t.Errorf("rr4 = %s, want %s", got, tc.rr4)
			}
			if got := strings.Join(rrData(t, out, "rr6"), " "); got != tc.rr6 {
				t.Errorf("rr6 = %s, want %s", got, tc.rr6)
			}
			for a, want := range tc.share {
				if got := share[u(a)]; got < want-1e-9 || got > want+1e-9 {
					t.Errorf("share of %s = %v, want %v", a, got, want)
				}
			}
			if got := strings.Join(rrData(t, rs, "rr4"), " "); got != "198.51.100.1:53 198.51.100.2:53 198.51.100.3:5353" {
				t.Errorf("the compiled ruleset changed: %s", got)
			}
		})
	}
}

// TestRunBadConfig: run's config keys are checked like the others: bad
// input names the file and line, exit 2, before anything is applied.
func TestRunBadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ line, want string }{
		{"health-interval: soon", `key "health-interval" wants a duration`},
		{"health-fails: -1", `key "health-fails" wants a positive integer`},
		{"flush-on-exit: maybe", `key "flush-on-exit" wants true or false`},
		{"refresh: 10ms", "--refresh 10ms: want at least 1s"},
		{"health-fails: [1]", `key "health-fails" wants a single value`},
	} {
		t.Run(tc.line, func(t *testing.T) {
			h := newHarness(t)
			list := h.write("a.txt", "a.example\n")
			cfg := h.write("c.yaml", "listen: 198.18.0.1\nupstream: 198.51.100.1\nclient: 198.18.0.0/24\nblocklist: "+list+"\n"+tc.line+"\n")
			code, _, stderr := h.run("run", "--config", cfg, "--state-dir", h.stateDir)
			if code != exitInput || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.want)
			}
			if strings.Contains(tc.want, "key") && !strings.Contains(stderr, cfg+":5") {
				t.Errorf("stderr %q does not name %s:5", stderr, cfg)
			}
			if h.k.applies != 0 {
				t.Errorf("applied despite bad input")
			}
		})
	}
}
