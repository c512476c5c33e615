package cli

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"nftdns/cmd/nftdns/state"
	"nftdns/rules"
)

// TestInterceptOptions: --intercept and --block-dot come from flags or the
// config file (flags win), reach the compiled table, are recorded with the
// generation (and kept by rollback), and show in status with their
// counters.
func TestInterceptOptions(t *testing.T) {
	h := newHarness(t)
	list := h.write("a.txt", "a.example\n")
	both := h.write("both.yaml", "intercept: true\nblock-dot: true\n")
	icpt := h.write("icpt.yaml", "intercept: yes\nblock-dot: false\n")
	for _, tc := range []struct {
		name           string
		args           []string
		intercept, dot bool
	}{
		{"neither", nil, false, false},
		{"flag intercept", []string{"--intercept"}, true, false},
		{"flag block-dot", []string{"--block-dot"}, false, true},
		{"both flags", []string{"--intercept", "--block-dot"}, true, true},
		{"config both", []string{"--config", both}, true, true},
		{"config yes", []string{"--config", icpt}, true, false},
		{"flag off wins over config", []string{"--config", both, "--intercept=false"}, false, true},
		{"flag on wins over config", []string{"--config", icpt, "--block-dot"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stateDir := filepath.Join(t.TempDir(), "state")
			args := append([]string{"apply", "--state-dir", stateDir, "--listen", "198.18.0.1", "--upstream", "198.51.100.1",
				"--client", "198.18.0.0/24", "--blocklist", list}, tc.args...)
			if code, _, stderr := h.run(args...); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			rs := h.k.tables["nftdns"]
			text := rs.Render()
			if got := strings.Contains(text, `counter name "intercepted_ipv4_udp" dnat`); got != tc.intercept {
				t.Errorf("intercept rule in the table: %v, want %v", got, tc.intercept)
			}
			if got := strings.Contains(text, `th dport 853 counter name "dot_blocked_ipv4_tcp" drop`); got != tc.dot {
				t.Errorf("port 853 rule in the table: %v, want %v", got, tc.dot)
			}
			s, _ := state.Open(stateDir, "nftdns")
			g, err := s.Current()
			if err != nil {
				t.Fatal(err)
			}
			if g.Settings.Intercept != tc.intercept || g.Settings.BlockDoT != tc.dot {
				t.Errorf("recorded settings %+v", g.Settings)
			}
			_, stdout, _ := h.run("status", "--state-dir", stateDir)
			wantLines := []string{fmt.Sprintf("intercept:  %s\n", onOff(tc.intercept)), fmt.Sprintf("block-dot:  %s\n", onOff(tc.dot))}
			for _, w := range wantLines {
				if !strings.Contains(stdout, w) {
					t.Errorf("status lacks %q:\n%s", w, stdout)
				}
			}
			for kind, on := range map[string]bool{rules.CounterIntercepted: tc.intercept, rules.CounterDoTBlocked: tc.dot} {
				if got := strings.Contains(stdout, rules.CounterName(kind, "ipv6", "tcp")); got != on {
					t.Errorf("status shows %s counters: %v, want %v:\n%s", kind, got, on, stdout)
				}
			}
		})
	}
}

// TestInterceptDiffAndRollback: turning the options on is a settings
// change (dry run says so); rollback restores the earlier value.
func TestInterceptDiffAndRollback(t *testing.T) {
	h := newHarness(t)
	list := h.write("a.txt", "a.example\n")
	if code, _, stderr := h.apply("--blocklist", list); code != 0 {
		t.Fatal(stderr)
	}
	hashOff := h.current().Hash
	_, stdout, _ := h.apply("--blocklist", list, "--intercept", "--block-dot", "--dry-run")
	if !strings.Contains(stdout, "settings: changed: intercept, block-dot\n") {
		t.Errorf("dry run:\n%s", stdout)
	}
	if code, _, stderr := h.apply("--blocklist", list, "--intercept", "--block-dot"); code != 0 {
		t.Fatal(stderr)
	}
	if g := h.current(); !g.Settings.Intercept || !g.Settings.BlockDoT || g.Hash == hashOff {
		t.Errorf("generation 2: %+v", g.Meta)
	}
	if code, _, stderr := h.run("rollback", "--state-dir", h.stateDir); code != 0 {
		t.Fatal(stderr)
	}
	g := h.current()
	if g.Settings.Intercept || g.Settings.BlockDoT || g.Hash != hashOff {
		t.Errorf("rollback: %+v, want the options off and hash %s", g.Meta, hashOff)
	}
	if strings.Contains(h.k.tables["nftdns"].Render(), "intercepted") {
		t.Error("rollback left the intercept rules in the table")
	}
}

// TestInterceptConfigErrors: a wrong value names the file and line.
func TestInterceptConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ yaml, want string }{
		{"intercept: maybe\n", `c.yaml:1: key "intercept" wants true or false`},
		{"table: a\nblock-dot: [true]\n", `c.yaml:2: key "block-dot" wants true or false`},
		{"intercept: true\nintercept: false\n", `c.yaml:2: key "intercept" given twice`},
	} {
		_, err := parseConfig([]byte(tc.yaml), "/etc/c.yaml")
		if code, msg := classify(err); err == nil || code != 2 || !strings.Contains(msg, tc.want) {
			t.Errorf("%q: %v, want exit 2 and %q", tc.yaml, err, tc.want)
		}
	}
}

// TestRenderIptablesRefusesIntercept: render --format iptables says the
// options are not translated, exit 2, instead of a ruleset without them.
func TestRenderIptablesRefusesIntercept(t *testing.T) {
	h := newHarness(t)
	list := h.write("a.txt", "a.example\n")
	for _, opt := range []string{"--intercept", "--block-dot", "--strict"} {
		code, stdout, stderr := h.run("render", "--format", "iptables", "--listen", "198.18.0.1", "--upstream", "198.51.100.1",
			"--client", "198.18.0.0/24", "--blocklist", list, opt)
		if code != 2 || stdout != "" || !strings.Contains(stderr, opt+" is not supported by the iptables renderer") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", opt, code, stdout, stderr)
		}
	}
}
