package cli

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"nftdns/cmd/nftdns/state"
	"nftdns/nft"
	"nftdns/rules"
)

// harness runs the CLI in-process against a fake kernel, with a state
// directory and list files under t.TempDir(). The CLI tests do not run in
// parallel: urfave/cli keeps some state (the help command) in globals.
type harness struct {
	t        *testing.T
	dir      string
	stateDir string
	k        *fakeKernel
	clock    time.Time
}

func newHarness(t *testing.T) *harness {
	dir := t.TempDir()
	return &harness{t: t, dir: dir, stateDir: filepath.Join(dir, "state"), k: newFakeKernel(),
		clock: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
}

func (h *harness) run(args ...string) (code int, stdout, stderr string) {
	h.t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, open: h.k.opener, now: func() time.Time {
		h.clock = h.clock.Add(time.Minute)
		return h.clock
	}}
	code = run(context.Background(), append([]string{"nftdns"}, args...), e)
	if h.k.open != 0 {
		h.t.Errorf("%v: %d kernel connections left open", args, h.k.open)
	}
	return code, out.String(), errb.String()
}

// write creates a file under the test directory and returns its path.
func (h *harness) write(name, content string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// settingsFlags are valid --listen/--upstream/--client flags and the state dir.
func (h *harness) settingsFlags() []string {
	return []string{"--state-dir", h.stateDir, "--listen", "198.18.0.1", "--upstream", "198.51.100.1",
		"--client", "198.18.0.0/24"}
}

func (h *harness) apply(extra ...string) (int, string, string) {
	h.t.Helper()
	return h.run(append(append([]string{"apply"}, h.settingsFlags()...), extra...)...)
}

func (h *harness) store() *state.Store {
	s, err := state.Open(h.stateDir, "nftdns")
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) current() *state.Generation {
	h.t.Helper()
	g, err := h.store().Current()
	if err != nil {
		h.t.Fatalf("current generation: %v", err)
	}
	return g
}

// wantRender compiles the default settings with lists parsed from
// path=content pairs, to compare with what the fake kernel holds.
func wantRender(t *testing.T, paths, contents []string) string {
	t.Helper()
	return wantRenderUpstreams(t, []string{"198.51.100.1"}, paths, contents)
}

func wantRenderUpstreams(t *testing.T, upstreams, paths, contents []string) string {
	t.Helper()
	var lists []*rules.List
	for i := range paths {
		l, err := rules.ParseList(strings.NewReader(contents[i]), paths[i], rules.ParseOptions{})
		if err != nil {
			t.Fatal(err)
		}
		lists = append(lists, l)
	}
	o := &options{table: "nftdns", listen: []string{"198.18.0.1"}, upstream: upstreams,
		client: []string{"198.18.0.0/24"}, action: "drop", logRate: "1/second", logBurst: 100}
	s, _, err := o.settings()
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rules.Compile(s, lists)
	if err != nil {
		t.Fatal(err)
	}
	return rs.Render()
}

func oneErrorLine(t *testing.T, stderr string) {
	t.Helper()
	if !strings.HasPrefix(stderr, "nftdns: ") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("stderr is not one 'nftdns: ' line: %q", stderr)
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       func(h *harness) []string
		setup      func(h *harness)
		code       int
		inStderr   []string
		noStateDir bool // the command must not create the state directory (implied by code 2)
	}{
		{name: "no command", code: 2, args: func(*harness) []string { return nil },
			inStderr: []string{"no command given", "see 'nftdns --help'"}},
		{name: "unknown command", code: 2, args: func(*harness) []string { return []string{"aply"} },
			inStderr: []string{`unknown command "aply"`}},
		{name: "unknown flag", code: 2, args: func(h *harness) []string { return []string{"apply", "--bogus"} },
			inStderr: []string{"unknown flag --bogus", "see 'nftdns apply --help'"}},
		{name: "flag without value", code: 2, args: func(h *harness) []string { return []string{"flush", "--table"} },
			inStderr: []string{"flag --table needs a value", "see 'nftdns flush --help'"}},
		{name: "bad number", code: 2, args: func(h *harness) []string { return []string{"apply", "--log-burst", "x"} },
			inStderr: []string{`invalid value "x" for --log-burst (see`}},
		{name: "stray argument", code: 2, args: func(h *harness) []string { return []string{"flush", "nftdns"} },
			inStderr: []string{`unexpected argument "nftdns"`}},
		{name: "missing listen", code: 2, args: func(h *harness) []string {
			return []string{"apply", "--upstream", "198.51.100.1", "--client", "198.18.0.0/24", "--blocklist", h.write("a.txt", "")}
		}, inStderr: []string{"missing --listen", "see 'nftdns apply --help'"}},
		{name: "missing upstream", code: 2, args: func(h *harness) []string {
			return []string{"apply", "--listen", "198.18.0.1", "--client", "198.18.0.0/24", "--blocklist", h.write("a.txt", "")}
		}, inStderr: []string{"missing --upstream", `as "upstream" in --config`}},
		{name: "invalid listen address", code: 2, args: func(h *harness) []string {
			return []string{"apply", "--listen", "box", "--upstream", "198.51.100.1", "--client", "198.18.0.0/24", "--blocklist", h.write("a.txt", "")}
		}, inStderr: []string{`--listen "box": not an IP address`}},
		{name: "bad upstream", code: 2, args: func(h *harness) []string {
			return []string{"apply", "--listen", "198.18.0.1", "--upstream", "resolver", "--client", "198.18.0.0/24", "--blocklist", h.write("a.txt", "")}
		}, inStderr: []string{`upstream "resolver"`}},
		{name: "bad client", code: 2, args: func(h *harness) []string {
			return []string{"apply", "--listen", "198.18.0.1", "--upstream", "198.51.100.1", "--client", "198.18.0.0/33", "--blocklist", h.write("a.txt", "")}
		}, inStderr: []string{`--client "198.18.0.0/33"`}},
		{name: "client host bits", code: 2, args: func(h *harness) []string {
			return []string{"apply", "--listen", "198.18.0.1", "--upstream", "198.51.100.1", "--client", "198.18.0.7/24", "--blocklist", h.write("a.txt", "")}
		}, inStderr: []string{"198.18.0.0/24"}},
		{name: "bad action", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--action", "bounce", "--blocklist", h.write("a.txt", ""))
		}, inStderr: []string{`--action "bounce": accepted values: drop, reject, nxdomain, refused, log`}},
		{name: "answer without interface", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--action", "nxdomain", "--blocklist", h.write("a.txt", "a.example\n"))
		}, inStderr: []string{`give --interface IF`}},
		{name: "answer with unknown interface", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--action", "refused", "--interface", "missing0", "--blocklist", h.write("a.txt", "a.example\n"))
		}, inStderr: []string{`--interface "missing0": no such interface`}},
		{name: "per-list answer without interface", code: 2, args: func(h *harness) []string {
			cfg := h.write("c.yaml", "blocklist: [{path: a.txt, action: nxdomain}]\n")
			h.write("a.txt", "a.example\n")
			return append(append([]string{"apply"}, h.settingsFlags()...), "--config", cfg)
		}, inStderr: []string{`give --interface IF`}},
		{name: "nflog group too big", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--nflog-group", "70000", "--blocklist", h.write("a.txt", ""))
		}, inStderr: []string{`--nflog-group 70000`}},
		{name: "bad rate", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--log-rate", "fast", "--blocklist", h.write("a.txt", ""))
		}, inStderr: []string{`"fast"`}},
		{name: "zero burst", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--log-burst", "0", "--blocklist", h.write("a.txt", ""))
		}, inStderr: []string{"--log-burst 0"}},
		{name: "bad table", code: 2, args: func(h *harness) []string { return []string{"flush", "--table", "../etc"} },
			inStderr: []string{`--table "../etc"`}},
		{name: "bad list line", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--blocklist", h.write("bad.txt", "ok.example\nnot a valid line\n"))
		}, inStderr: []string{"bad.txt:2:"}},
		{name: "missing list", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--blocklist", filepath.Join(h.dir, "gone.txt"))
		}, inStderr: []string{"gone.txt"}},
		{name: "list is a directory", code: 2, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--blocklist", h.dir)
		}, inStderr: []string{"blocklist: read ", "is a directory"}},
		{name: "kernel failure", code: 1, noStateDir: true, setup: func(h *harness) {
			h.k.applyErr = fmt.Errorf(`apply table "nftdns": netlink receive: no buffer space available`)
		},
			args: func(h *harness) []string {
				return append(append([]string{"apply"}, h.settingsFlags()...), "--blocklist", h.write("a.txt", "a.example\n"))
			}, inStderr: []string{"nftdns: apply table inet nftdns: netlink receive: no buffer space"}},
		{name: "concurrent change", code: 1, noStateDir: true, setup: func(h *harness) { h.k.applyErr = fmt.Errorf("commit: %w", errConcurrentChange) },
			args: func(h *harness) []string {
				return append(append([]string{"apply"}, h.settingsFlags()...), "--blocklist", h.write("a.txt", "a.example\n"))
			}, inStderr: []string{"changed concurrently", "retry"}},
		{name: "not root", code: 1, setup: func(h *harness) { h.k.openErr = fmt.Errorf("netlink dial: %w", syscall.EPERM) },
			args: func(h *harness) []string { return []string{"flush"} }, inStderr: []string{"needs root"}},
		{name: "rollback without state", code: 1, args: func(h *harness) []string {
			return []string{"rollback", "--state-dir", h.stateDir}
		}, inStderr: []string{"nothing to roll back"}, noStateDir: true},
		{name: "help topic", code: 2, args: func(h *harness) []string { return []string{"help", "nosuch"} },
			inStderr: []string{"nosuch"}},
		{name: "ok", code: 0, args: func(h *harness) []string {
			return append(append([]string{"apply"}, h.settingsFlags()...), "--blocklist", h.write("a.txt", "a.example\n"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if tc.setup != nil {
				tc.setup(h)
			}
			code, _, stderr := h.run(tc.args(h)...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tc.code, stderr)
			}
			if tc.code == 0 {
				if stderr != "" {
					t.Errorf("stderr %q on success", stderr)
				}
				return
			}
			oneErrorLine(t, stderr)
			if _, err := os.Stat(h.stateDir); (tc.noStateDir || tc.code == 2) && !os.IsNotExist(err) {
				t.Errorf("a failed command created the state directory")
			}
			for _, s := range tc.inStderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr %q does not contain %q", stderr, s)
				}
			}
		})
	}
}

func TestHelpIsNotAnError(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"apply", "--help"}, {"help", "rollback"}} {
		h := newHarness(t)
		code, stdout, stderr := h.run(args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, "USAGE") {
			t.Errorf("%v: exit %d, stderr %q, stdout %.80q", args, code, stderr, stdout)
		}
	}
}

func TestApplyRecordsGeneration(t *testing.T) {
	h := newHarness(t)
	list := h.write("lists/ads.txt", "ads.example\ntracker.example\n")
	code, stdout, stderr := h.apply("--blocklist", list, "--netns", "box")
	if code != 0 {
		t.Fatalf("apply: exit %d: %s", code, stderr)
	}
	for _, s := range []string{"applied generation 1 to table inet nftdns in netns box", "2 names from 1 lists", "ruleset generation 1"} {
		if !strings.Contains(stdout, s) {
			t.Errorf("summary %q lacks %q", stdout, s)
		}
	}
	if len(h.k.opened) != 1 || h.k.opened[0] != "box" {
		t.Errorf("opened netns %v, want [box]", h.k.opened)
	}
	g := h.current()
	if g.Seq != 1 || g.Netns != "box" || len(g.Lists) != 1 || g.Lists[0].Path != list || g.Lists[0].Names != 2 {
		t.Errorf("meta %+v", g.Meta)
	}
	if want := (state.Settings{Table: "nftdns", Listen: []string{"198.18.0.1"}, Upstreams: []string{"198.51.100.1:53"},
		Clients: []string{"198.18.0.0/24"}, Action: "drop", LogRate: "1/second", LogBurst: 100}); len(want.Diff(g.Settings)) != 0 {
		t.Errorf("settings %+v, want %+v", g.Settings, want)
	}
	if got, want := h.k.tables["nftdns"].Render(), wantRender(t, []string{list}, []string{"ads.example\ntracker.example\n"}); got != want {
		t.Errorf("kernel holds a different ruleset")
	}

	// The same input again: re-applied, but no new generation.
	code, stdout, _ = h.apply("--blocklist", list, "--netns", "box")
	if code != 0 || !strings.Contains(stdout, "generation 1 again (unchanged)") {
		t.Errorf("re-apply: exit %d, %q", code, stdout)
	}
	if h.k.applies != 2 || h.current().Seq != 1 {
		t.Errorf("re-apply: %d applies, current %d", h.k.applies, h.current().Seq)
	}
}

func TestApplyFailureLeavesStateAlone(t *testing.T) {
	h := newHarness(t)
	list := h.write("a.txt", "a.example\n")
	if code, _, stderr := h.apply("--blocklist", list); code != 0 {
		t.Fatal(stderr)
	}
	before := tree(t, h.stateDir)
	h.write("a.txt", "b.example\n")
	h.k.applyErr = fmt.Errorf("netlink: invalid argument")
	if code, _, _ := h.apply("--blocklist", list); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if after := tree(t, h.stateDir); after != before {
		t.Errorf("state directory changed by a failed apply:\nbefore %s\nafter  %s", before, after)
	}
}

func TestRotationThroughApply(t *testing.T) {
	h := newHarness(t)
	for i := 1; i <= 7; i++ {
		list := h.write("a.txt", fmt.Sprintf("n%d.example\n", i))
		if code, _, stderr := h.apply("--blocklist", list); code != 0 {
			t.Fatal(stderr)
		}
	}
	ents, err := os.ReadDir(filepath.Join(h.stateDir, "nftdns"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := "current gen-000003 gen-000004 gen-000005 gen-000006 gen-000007 lock"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("state directory holds %q, want %q", got, want)
	}
}

func TestRollback(t *testing.T) {
	h := newHarness(t)
	list := h.write("lists/a.txt", "one.example\ntwo.example\n")
	if code, _, stderr := h.apply("--blocklist", list, "--netns", "box"); code != 0 {
		t.Fatal(stderr)
	}
	h.write("lists/a.txt", "three.example\n")
	if code, _, stderr := h.apply("--blocklist", list, "--netns", "box", "--upstream", "198.51.100.2"); code != 0 {
		t.Fatal(stderr)
	}
	// The source changes and disappears; a fresh process (new fake
	// kernel, as after a reboot) rolls back from the stored copies.
	if err := os.Remove(list); err != nil {
		t.Fatal(err)
	}
	h.k = newFakeKernel()
	code, stdout, stderr := h.run("rollback", "--state-dir", h.stateDir)
	if code != 0 {
		t.Fatalf("rollback: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "rolled back table inet nftdns in netns box to generation 1 (recorded as generation 3)") {
		t.Errorf("rollback said %q", stdout)
	}
	if fmt.Sprint(h.k.opened) != "[box]" {
		t.Errorf("rollback opened %v, want the recorded netns box", h.k.opened)
	}
	if h.k.applies != 1 {
		t.Errorf("%d applies, want one atomic apply", h.k.applies)
	}
	if got, want := h.k.tables["nftdns"].Render(), wantRender(t, []string{list}, []string{"one.example\ntwo.example\n"}); got != want {
		t.Errorf("rollback applied a different ruleset than generation 1's:\n%s\nwant\n%s", got, want)
	}
	g := h.current()
	if g.Seq != 3 || g.RollbackOf != 1 || g.Settings.Upstreams[0] != "198.51.100.1:53" || g.Lists[0].Names != 2 {
		t.Errorf("rollback generation %+v", g.Meta)
	}

	// A second rollback undoes the first: generation 2 again.
	code, stdout, _ = h.run("rollback", "--state-dir", h.stateDir)
	if code != 0 || !strings.Contains(stdout, "to generation 2 (recorded as generation 4)") {
		t.Errorf("second rollback: exit %d, %q", code, stdout)
	}
	if got, want := h.k.tables["nftdns"].Render(), wantRenderUpstreams(t, []string{"198.51.100.1", "198.51.100.2"}, []string{list}, []string{"three.example\n"}); got != want {
		t.Errorf("second rollback did not restore generation 2")
	}
	if len(h.current().Settings.Upstreams) != 2 {
		t.Errorf("second rollback settings %+v", h.current().Settings)
	}

	// --to picks any kept generation; an unknown one is an error.
	if code, stdout, _ := h.run("rollback", "--state-dir", h.stateDir, "--to", "1"); code != 0 || !strings.Contains(stdout, "to generation 1 (recorded as generation 5)") {
		t.Errorf("rollback --to 1: exit %d, %q", code, stdout)
	}
	if code, _, stderr := h.run("rollback", "--state-dir", h.stateDir, "--to", "99"); code != 1 || !strings.Contains(stderr, "--to 99") {
		t.Errorf("rollback --to 99: exit %d, %q", code, stderr)
	}
}

func TestRollbackNeedsPrevious(t *testing.T) {
	h := newHarness(t)
	if code, _, stderr := h.apply("--blocklist", h.write("a.txt", "a.example\n")); code != 0 {
		t.Fatal(stderr)
	}
	code, _, stderr := h.run("rollback", "--state-dir", h.stateDir)
	if code != 1 || !strings.Contains(stderr, "no generation before the current one (1)") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	oneErrorLine(t, stderr)
}

func TestDryRun(t *testing.T) {
	h := newHarness(t)
	a := h.write("a.txt", "one.example\ntwo.example\nthree.example\n")
	b := h.write("b.txt", "old.example\n")
	if code, _, stderr := h.apply("--blocklist", a, "--blocklist", b); code != 0 {
		t.Fatal(stderr)
	}
	h.write("a.txt", "one.example\nthree.example\nfour.example\nfive.example\n")
	c := h.write("c.txt", "new.example\n")
	before := tree(t, h.stateDir)
	applies := h.k.applies

	code, stdout, stderr := h.apply("--blocklist", a, "--blocklist", c, "--upstream", "198.51.100.9", "--log-burst", "5", "--dry-run")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := []string{
		"dry run: nothing applied",
		"compared with generation 1 (applied 2025-06-01T12:01:00Z, sha256:",
		"list " + a + ": 4 names, +2 -1",
		"list " + c + ": 1 names, +1 -0 (new list)",
		"list " + b + ": 0 names, +0 -1 (list removed)",
		"settings: changed: upstream, log-burst",
		"apply: full (",
		"would apply: 5 names from 2 lists, ",
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != len(want) {
		t.Fatalf("dry run printed %d lines, want %d:\n%s", len(lines), len(want), stdout)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i+1, lines[i], w)
		}
	}
	if h.k.applies != applies || len(h.k.opened) != 1 {
		t.Errorf("dry run touched the kernel")
	}
	if after := tree(t, h.stateDir); after != before {
		t.Errorf("dry run changed the state directory")
	}

	// Nothing changed: said so.
	h.write("a.txt", "one.example\ntwo.example\nthree.example\n")
	_, stdout, _ = h.apply("--blocklist", a, "--blocklist", b, "--dry-run")
	if !strings.Contains(stdout, "settings: unchanged\nno changes: identical to generation 1\napply: incremental, +0 -0 set elements") {
		t.Errorf("unchanged dry run said:\n%s", stdout)
	}
	// One name of the same length swapped: an element change.
	h.write("a.txt", "one.example\ntwo.example\nseven.example\n")
	_, stdout, _ = h.apply("--blocklist", a, "--blocklist", b, "--dry-run")
	if !strings.Contains(stdout, "list "+a+": 3 names, +1 -1\n") || !strings.Contains(stdout, "apply: incremental, +1 -1 set elements") {
		t.Errorf("one-name dry run said:\n%s", stdout)
	}
	// No state yet: everything is new.
	h2 := newHarness(t)
	_, stdout, _ = h2.apply("--blocklist", h2.write("a.txt", "x.example\n"), "--dry-run")
	if !strings.Contains(stdout, "no generation applied yet") || !strings.Contains(stdout, ": 1 names, +1 -0\n") {
		t.Errorf("first dry run said:\n%s", stdout)
	}
	if _, err := os.Stat(h2.stateDir); !os.IsNotExist(err) {
		t.Errorf("dry run created the state directory")
	}
}

func TestStatus(t *testing.T) {
	h := newHarness(t)
	list := h.write("a.txt", "a.example\nb.example\n")
	if code, _, stderr := h.apply("--blocklist", list, "--upstream", "[2001:db8::53]:5353", "--listen", "2001:db8::1", "--client", "2001:db8:1::/64"); code != 0 {
		t.Fatal(stderr)
	}
	h.k.setCounter("nftdns", rules.CounterName(rules.CounterBlocked, "ipv4", "udp"), counterValue{Packets: 7, Bytes: 420})

	code, stdout, stderr := h.run("status", "--state-dir", h.stateDir, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout)
	}
	for _, k := range []string{"generation", "applied_at", "hash", "lists", "listen", "upstreams", "clients", "counters", "table_present", "table", "netns", "rollback_of"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status JSON lacks %q", k)
		}
	}
	if st["generation"] != 1.0 || st["table_present"] != true || st["applied_at"] != "2025-06-01T12:01:00Z" {
		t.Errorf("status JSON %v", st)
	}
	if fmt.Sprint(st["upstreams"]) != "[198.51.100.1:53 [2001:db8::53]:5353]" {
		t.Errorf("upstreams %v", st["upstreams"])
	}
	if fmt.Sprint(st["lists"]) != fmt.Sprintf("[map[action:drop counter:list_0 names:2 path:%s]]", list) {
		t.Errorf("lists %v", st["lists"])
	}
	blocked := st["counters"].(map[string]any)["blocked_ipv4_udp"]
	if fmt.Sprint(blocked) != "map[bytes:420 packets:7]" {
		t.Errorf("blocked_ipv4_udp = %v", blocked)
	}

	_, stdout, _ = h.run("status", "--state-dir", h.stateDir)
	for _, s := range []string{"table inet nftdns: present", "generation: 1, applied 2025-06-01T12:01:00Z, sha256:", list, "2 names",
		"198.51.100.1:53, [2001:db8::53]:5353", "blocked_ipv4_udp", "forward_dropped"} {
		if !strings.Contains(stdout, s) {
			t.Errorf("status lacks %q:\n%s", s, stdout)
		}
	}

	// Table flushed, state kept: reported, exit 0.
	if code, stdout, _ := h.run("flush"); code != 0 || stdout != "flushed table inet nftdns\n" {
		t.Errorf("flush: %d %q", code, stdout)
	}
	if code, stdout, _ := h.run("flush"); code != 0 || stdout != "table inet nftdns not present\n" {
		t.Errorf("second flush: %d %q", code, stdout)
	}
	code, stdout, _ = h.run("status", "--state-dir", h.stateDir, "--json")
	if code != 0 || !strings.Contains(stdout, `"table_present": false`) || !strings.Contains(stdout, `"generation": 1`) {
		t.Errorf("status after flush: exit %d\n%s", code, stdout)
	}
	_, stdout, _ = h.run("status", "--state-dir", h.stateDir)
	if !strings.Contains(stdout, "not present") || !strings.Contains(stdout, "recorded but not in the kernel") {
		t.Errorf("status after flush:\n%s", stdout)
	}

	// No state, no table.
	h2 := newHarness(t)
	code, stdout, _ = h2.run("status", "--state-dir", h2.stateDir, "--json")
	if code != 0 || !strings.Contains(stdout, `"generation": null`) || !strings.Contains(stdout, `"lists": []`) {
		t.Errorf("empty status: exit %d\n%s", code, stdout)
	}
}

func TestCheck(t *testing.T) {
	h := newHarness(t)
	a := h.write("a.txt", "# ads\nads.example\n")
	b := h.write("b.txt", "0.0.0.0 tracker.example\nads.example\n")
	code, stdout, stderr := h.run("check", "--blocklist", a, "--blocklist", b, "ADS.example.", "tracker.example", "fine.example")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := fmt.Sprintf("ADS.example.: blocked by %s:2 (ads.example)\ntracker.example: blocked by %s:1 (tracker.example)\nfine.example: not listed\n", a, b)
	if stdout != want {
		t.Errorf("check printed\n%s\nwant\n%s", stdout, want)
	}
	// Suffix entries and exceptions, explained by their lines.
	c := h.write("c.txt", "[Adblock Plus 2.0]\n||ads.example^\n*.cdn.example\n@@||ok.ads.example^\n")
	code, stdout, stderr = h.run("check", "--blocklist", c, "x.ads.example", "a.ok.ads.example", "cdn.example", "b.cdn.example", "notads.example")
	want = fmt.Sprintf("x.ads.example: blocked by %[1]s:2 (||ads.example^)%[2]s\na.ok.ads.example: allowed by %[1]s:4 (@@||ok.ads.example^)%[2]s\n"+
		"cdn.example: not listed\nb.cdn.example: blocked by %[1]s:3 (*.cdn.example)%[2]s\nnotads.example: not listed\n", c, suffixNote)
	if code != 0 || stdout != want {
		t.Errorf("check (suffixes) exit %d printed\n%s\nwant\n%s\n%s", code, stdout, want, stderr)
	}
	code, stdout, stderr = h.run("check", "--blocklist", a, "bad name!", "ads.example")
	if code != 2 || !strings.HasPrefix(stdout, "bad name!: invalid name: ") || !strings.Contains(stdout, "ads.example: blocked") {
		t.Errorf("invalid name: exit %d\n%s", code, stdout)
	}
	oneErrorLine(t, stderr)
	if code, _, stderr := h.run("check", "--blocklist", a, "x.example", "--json"); code != 2 || !strings.Contains(stderr, "flags go before the names") {
		t.Errorf("flag after names: exit %d %q", code, stderr)
	}
	// A listed name may start with a hyphen; after "--" check takes it as a name.
	dash := h.write("dash.txt", "-x.example\n")
	if code, stdout, stderr := h.run("check", "--blocklist", dash, "--", "-x.example"); code != 0 || !strings.Contains(stdout, "-x.example: blocked by") {
		t.Errorf("hyphen name: exit %d %q %q", code, stdout, stderr)
	}
	if len(h.k.opened) != 0 {
		t.Errorf("check opened the kernel")
	}
}

func TestRenderFormats(t *testing.T) {
	h := newHarness(t)
	list := h.write("a.txt", "a.example\n")
	args := append(h.settingsFlags(), "--blocklist", list)
	for _, tc := range []struct {
		format, want string
		code         int
	}{
		{"nft", "table inet nftdns", 0},
		{"iptables", "*raw", 0},
		{"ip6tables", "*raw", 0},
		{"pf", "--format \"pf\"", 2},
	} {
		code, stdout, stderr := h.run(append([]string{"render", "--format", tc.format}, args...)...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("render --format %s: exit %d, stdout %.80q, stderr %q; want exit %d and %q", tc.format, code, stdout, stderr, tc.code, tc.want)
		}
	}
	if len(h.k.opened) != 0 {
		t.Errorf("render opened the kernel")
	}
}

func TestRender(t *testing.T) {
	h := newHarness(t)
	list := h.write("a.txt", "a.example\n")
	code, stdout, stderr := h.run(append(append([]string{"render"}, h.settingsFlags()...), "--blocklist", list)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if want := wantRender(t, []string{list}, []string{"a.example\n"}); strings.TrimSuffix(stdout, "\n") != strings.TrimSuffix(want, "\n") {
		t.Errorf("render printed\n%s\nwant\n%s", stdout, want)
	}
	if len(h.k.opened) != 0 {
		t.Errorf("render opened the kernel")
	}
	if _, err := os.Stat(h.stateDir); !os.IsNotExist(err) {
		t.Errorf("render created the state directory")
	}
}

func TestSkipInvalid(t *testing.T) {
	h := newHarness(t)
	list := h.write("a.txt", "a.example\nbad name\nb.example\nbad_too!\n")
	code, _, stderr := h.apply("--blocklist", list, "--skip-invalid")
	if code != 0 || stderr != fmt.Sprintf("nftdns: skipped 2 invalid lines in %s\n", list) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if g := h.current(); !g.SkipInvalid || g.Lists[0].Names != 2 {
		t.Errorf("meta %+v", g.Meta)
	}
}

func TestConfigMerge(t *testing.T) {
	h := newHarness(t)
	h.write("conf/lists/ads.txt", "ads.example\n")
	h.write("conf/lists/with,comma.txt", "comma.example\n")
	cfg := h.write("conf/nftdns.yaml", `# nftdns config
table: filtered
listen: 198.18.0.1
upstream: [198.51.100.1, "[2001:db8::1]:5353"]
client:
  - 198.18.0.0/24
blocklist: [lists/ads.txt, "lists/with,comma.txt"]
log-rate: 10/minute
log-burst: 20
skip-invalid: true
`)
	for _, tc := range []struct {
		name  string
		flags []string
		check func(t *testing.T, s state.Settings, g *state.Generation)
	}{
		{name: "file only", check: func(t *testing.T, s state.Settings, g *state.Generation) {
			if fmt.Sprint(s.Upstreams) != "[198.51.100.1:53 [2001:db8::1]:5353]" || s.LogRate != "10/minute" || s.LogBurst != 20 || !g.SkipInvalid {
				t.Errorf("settings %+v", s)
			}
			want := []string{filepath.Join(h.dir, "conf/lists/ads.txt"), filepath.Join(h.dir, "conf/lists/with,comma.txt")}
			if len(g.Lists) != 2 || g.Lists[0].Path != want[0] || g.Lists[1].Path != want[1] {
				t.Errorf("lists %+v, want paths %v (relative to the config file, commas kept)", g.Lists, want)
			}
		}},
		{name: "flags win", flags: []string{"--upstream", "[2001:db8::2]:53", "--upstream", "198.51.100.7:5353", "--log-burst", "3", "--log-rate", "2/second"},
			check: func(t *testing.T, s state.Settings, g *state.Generation) {
				if fmt.Sprint(s.Upstreams) != "[[2001:db8::2]:53 198.51.100.7:5353]" || s.LogBurst != 3 || s.LogRate != "2/second" {
					t.Errorf("settings %+v: command-line flags should replace the file's values", s)
				}
				if s.Clients[0] != "198.18.0.0/24" || s.Table != "filtered" {
					t.Errorf("settings %+v: unflagged keys should come from the file", s)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stateDir := filepath.Join(t.TempDir(), "state")
			args := append([]string{"apply", "--config", cfg, "--state-dir", stateDir}, tc.flags...)
			code, _, stderr := h.run(args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			s, _ := state.Open(stateDir, "filtered")
			g, err := s.Current()
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, g.Settings, g)
		})
	}

	// A state-dir given in the file is relative to it too.
	cfg2 := h.write("conf2/c.yaml", "state-dir: st\nlisten: [198.18.0.1]\nupstream: [198.51.100.1]\nclient: [198.18.0.0/24]\nblocklist: [../conf/lists/ads.txt]\n")
	if code, _, stderr := h.run("apply", "--config", cfg2); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "conf2/st/nftdns/current")); err != nil {
		t.Errorf("state-dir from config not relative to it: %v", err)
	}
}

// suffixNote is what check adds to the decision of a suffix entry.
const suffixNote = "; matched in the kernel for every query layout (any EDNS options or extra records, UDP and TCP)"

// TestPerListOptions: the mapping form of list entries reaches the parsed
// lists and the recorded generation, and a rollback parses with them.
func TestPerListOptions(t *testing.T) {
	h := newHarness(t)
	a := h.write("a.txt", "ads.example\n")
	b := h.write("b.txt", "malware.example\n")
	ok := h.write("ok.txt", "fine.example\n")
	conf := h.write("c.yaml", "blocklist:\n  - a.txt\n  - path: b.txt\n    action: drop\n    subdomains: true\nallowlist: ok.txt\n")
	fc, err := loadConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	want := []rules.ListSpec{{Path: a}, {Path: b, Action: "drop", Subdomains: true}}
	if !reflect.DeepEqual(fc.blocklist, want) || !reflect.DeepEqual(fc.allowlist, []rules.ListSpec{{Path: ok, Allow: true}}) {
		t.Fatalf("blocklist %+v allowlist %+v", fc.blocklist, fc.allowlist)
	}
	if code, _, stderr := h.apply("--config", conf); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, stderr)
	}
	g := h.current()
	if len(g.Lists) != 3 || g.Lists[1].Action != "drop" || !g.Lists[1].Subdomains || !g.Lists[2].Allow || g.Lists[0].ListOptions != (state.ListOptions{}) {
		t.Fatalf("recorded lists %+v", g.Lists)
	}
	// The options are part of the content hash: the same files as plain
	// blocklists are a different generation.
	if code, stdout, stderr := h.apply("--blocklist", a, "--blocklist", b, "--blocklist", ok); code != 0 || strings.Contains(stdout, "unchanged") {
		t.Fatalf("apply plain: exit %d %q %s", code, stdout, stderr)
	}
	if code, _, stderr := h.run("rollback", "--state-dir", h.stateDir); code != 0 {
		t.Fatalf("rollback: exit %d: %s", code, stderr)
	}
	if g := h.current(); g.RollbackOf != 1 || !g.Lists[2].Allow || g.Lists[1].Action != "drop" {
		t.Fatalf("rollback recorded %+v", g.Lists)
	}
	code, _, stderr := h.apply("--config", conf, "--action", "drop")
	if code != 0 {
		t.Fatalf("apply: %s", stderr)
	}
	bad := h.write("bad.yaml", "blocklist:\n  - {path: a.txt, action: explode}\n")
	if code, _, stderr := h.apply("--config", bad); code != 2 || !strings.Contains(stderr, `action "explode"`) {
		t.Errorf("bad per-list action: exit %d %q", code, stderr)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown key", "listen: [198.18.0.1]\nupstreams: [198.51.100.1]\n", `c.yaml:2: unknown key "upstreams" (accepted: netns,`},
		{"command-line only", "dry-run: true\n", `c.yaml:1: key "dry-run" is only a command-line flag`},
		{"duplicate", "table: a\ntable: b\n", `c.yaml:2: key "table" given twice`},
		{"list of maps", "upstream:\n  - {addr: 1}\n", `c.yaml:2: key "upstream" wants a list of strings`},
		{"map for list", "client: {a: b}\n", `key "client" wants a list`},
		{"list for scalar", "table: [a, b]\n", `key "table" wants a single value`},
		{"bad bool", "skip-invalid: maybe\n", `key "skip-invalid" wants true or false`},
		{"negative", "log-burst: -1\n", `key "log-burst" wants a non-negative integer`},
		{"not a mapping", "- listen\n", "want a mapping"},
		{"syntax", "listen: [\n", "c.yaml"},
		{"list entry key", "blocklist:\n  - {path: a, actoin: drop}\n", `c.yaml:2: blocklist entry: unknown key "actoin" (accepted: path, format, subdomains, action)`},
		{"list entry path", "blocklist:\n  - {action: drop}\n", `c.yaml:2: blocklist entry without a path`},
		{"allowlist action", "allowlist:\n  - {path: a, action: drop}\n", `c.yaml:2: allowlist entry: "action" is only for blocklists`},
		{"list entry bool", "blocklist:\n  - path: a\n    subdomains: often\n", `c.yaml:3: blocklist entry: "subdomains" wants true or false`},
		{"list entry twice", "blocklist:\n  - path: a\n    path: b\n", `c.yaml:3: blocklist entry: key "path" given twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseConfig([]byte(tc.yaml), "/etc/c.yaml")
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if code, msg := classify(err); code != 2 || !strings.Contains(msg, tc.want) {
				t.Errorf("exit %d, %q; want 2 and %q", code, msg, tc.want)
			}
		})
	}
	for _, ok := range []string{"", "# nothing\n", "listen: 198.18.0.1\n"} {
		if _, err := parseConfig([]byte(ok), "c.yaml"); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}

func TestConfigUnknownKeyExitCode(t *testing.T) {
	h := newHarness(t)
	cfg := h.write("c.yaml", "blocklists: [a.txt]\n")
	code, _, stderr := h.run("render", "--config", cfg)
	if code != 2 || !strings.Contains(stderr, `unknown key "blocklists"`) {
		t.Errorf("exit %d, %q", code, stderr)
	}
	oneErrorLine(t, stderr)
	if code, _, stderr := h.run("apply", "--config", filepath.Join(h.dir, "nope.yaml")); code != 2 || !strings.Contains(stderr, "nope.yaml") {
		t.Errorf("missing config: exit %d, %q", code, stderr)
	}
}

// tree lists the files under dir with their contents' sizes, to compare
// states (directory sizes depend on the file system and are left out).
func tree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			fmt.Fprintf(&b, "%s/ ", strings.TrimPrefix(p, dir))
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s:%d ", strings.TrimPrefix(p, dir), len(data))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestRepeatableFlagsNotSplit(t *testing.T) {
	h := newHarness(t)
	list := h.write("a,b.txt", "a.example\n")
	code, _, stderr := h.run("apply", "--state-dir", h.stateDir, "--listen", "2001:db8::1", "--listen", "198.18.0.1",
		"--upstream", "[2001:db8::53]:5353", "--upstream", "198.51.100.1", "--client", "2001:db8:1::/64", "--client", "198.18.0.0/24",
		"--blocklist", list)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	g := h.current()
	if fmt.Sprint(g.Settings.Listen, g.Settings.Upstreams, g.Settings.Clients) != "[2001:db8::1 198.18.0.1] [[2001:db8::53]:5353 198.51.100.1:53] [2001:db8:1::/64 198.18.0.0/24]" {
		t.Errorf("settings %+v", g.Settings)
	}
	if g.Lists[0].Path != list {
		t.Errorf("list path %q, want %q (not split at the comma)", g.Lists[0].Path, list)
	}
}

func TestConfigKeysAreFlagNames(t *testing.T) {
	t.Parallel()
	flags := map[string]bool{}
	for _, f := range applyFlags() {
		flags[f.Names()[0]] = true
	}
	runFlags := map[string]bool{}
	for _, f := range runCommand(nil).Flags {
		runFlags[f.Names()[0]] = true
	}
	for k, kind := range configKeys {
		if kind == "extra" {
			if !runFlags[k] {
				t.Errorf("config key %q is not a run flag", k)
			}
			continue
		}
		if !flags[k] {
			t.Errorf("config key %q is not an apply flag", k)
		}
	}
}

func TestTranslateKeepsText(t *testing.T) {
	t.Parallel()
	err := translate(fmt.Errorf("apply table %q: %w", "nftdns", nft.ErrGenerationChanged))
	if !errors.Is(err, errConcurrentChange) || !errors.Is(err, nft.ErrGenerationChanged) {
		t.Errorf("%v does not match both sentinels", err)
	}
	code, msg := classify(withContext("apply table inet nftdns", err, `apply table "nftdns": `))
	if code != 1 || !strings.HasPrefix(msg, "apply table inet nftdns: "+nft.ErrGenerationChanged.Error()) || !strings.HasSuffix(msg, "retry") {
		t.Errorf("classify = %d, %q", code, msg)
	}
	if err := translate(fmt.Errorf("x: %w", nft.ErrNoTable)); !errors.Is(err, errNoTable) {
		t.Errorf("ErrNoTable not translated")
	}
}

// TestGlobGzipAllowlist: a glob reads its files in name order, a gzip list
// is read transparently and stored as read, the allowlist wins in check,
// and a rollback from the stored copies parses the same lists.
func TestGlobGzipAllowlist(t *testing.T) {
	h := newHarness(t)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write([]byte("||ads.example^\n*.track.example\n")); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	h.write("feeds/f-2026-11-21.txt.gz", buf.String())
	h.write("feeds/f-2026-11-20.txt", "malware.example\n")
	allow := h.write("allow.txt", "ok.ads.example\n")
	glob := filepath.Join(h.dir, "feeds", "f-2026-11-2?.txt*")
	code, stdout, stderr := h.run("check", "--blocklist", glob, "--allowlist", allow, "x.ads.example", "ok.ads.example", "a.track.example", "malware.example")
	want := fmt.Sprintf("x.ads.example: blocked by %[1]s.gz:1 (||ads.example^)%[4]s\nok.ads.example: allowed by %[2]s:1 (ok.ads.example)\n"+
		"a.track.example: blocked by %[1]s.gz:2 (*.track.example)%[4]s\nmalware.example: blocked by %[3]s:1 (malware.example)\n",
		filepath.Join(h.dir, "feeds", "f-2026-11-21.txt"), allow, filepath.Join(h.dir, "feeds", "f-2026-11-20.txt"), suffixNote)
	if code != 0 || stdout != want {
		t.Fatalf("check: exit %d\n%s\nwant\n%s\n%s", code, stdout, want, stderr)
	}
	if code, _, stderr := h.apply("--blocklist", glob, "--allowlist", allow); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, stderr)
	}
	g := h.current()
	if len(g.Lists) != 3 || !strings.HasSuffix(g.Lists[0].Path, "f-2026-11-20.txt") || !strings.HasSuffix(g.Lists[1].Path, ".gz") || !g.Lists[2].Allow {
		t.Fatalf("recorded %+v", g.Lists)
	}
	stored, err := g.OpenList(1)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(stored)
	stored.Close()
	if err != nil || !bytes.Equal(raw, buf.Bytes()) {
		t.Fatalf("stored copy is not the gzip bytes as read (%v)", err)
	}
	for i := range g.Lists {
		l, err := parseStored(g, i)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 && (len(l.Entries) != 2 || l.Entries[1].Match != rules.MatchBelow) {
			t.Fatalf("stored gzip copy parsed as %+v", l.Entries)
		}
	}
	if code, _, stderr := h.apply("--blocklist", filepath.Join(h.dir, "feeds", "none-*.txt")); code != 2 || !strings.Contains(stderr, "glob matches no file") {
		t.Fatalf("empty glob: exit %d: %s", code, stderr)
	}
	h.write("feeds/f-2026-11-22.txt", "new.example\n")
	if code, _, stderr := h.apply("--blocklist", glob, "--allowlist", allow); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, stderr)
	}
	if code, _, stderr := h.run("rollback", "--state-dir", h.stateDir); code != 0 {
		t.Fatalf("rollback: exit %d: %s", code, stderr)
	}
	if g := h.current(); len(g.Lists) != 3 || g.RollbackOf == 0 {
		t.Fatalf("rollback recorded %+v", g.Lists)
	}
}

// TestDeployConfig: the example config in deploy/ is accepted by apply and
// run, with the values its comments promise.
func TestDeployConfig(t *testing.T) {
	t.Parallel()
	fc, err := loadConfig(filepath.Join("..", "deploy", "nftdns.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(fc.upstream) != 3 || len(fc.blocklist) != 2 || !isURL(fc.blocklist[1].Path) {
		t.Errorf("example config: %+v", fc)
	}
	for _, k := range []string{flagRefresh, flagHealthInterval, flagHealthFails, flagMetrics, flagFlushOnExit} {
		if _, ok := fc.extra[k]; !ok {
			t.Errorf("example config lacks %q", k)
		}
	}
}

// TestApplyFullSaysSo: the summary line of apply --full gives --full as
// the reason for a full apply, not a missing base.
func TestApplyFullSaysSo(t *testing.T) {
	h := newHarness(t)
	a := h.write("a.txt", "one.example\n")
	if code, _, stderr := h.apply("--blocklist", a); code != 0 {
		t.Fatal(stderr)
	}
	h.write("a.txt", "two.example\n")
	code, stdout, stderr := h.apply("--blocklist", a, "--full")
	if code != 0 || !strings.HasSuffix(strings.SplitN(stdout, "\n", 2)[0], ", full: --full") {
		t.Errorf("apply --full: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestEntriesCounted: the per-list counts and the dry run's diff count
// every entry, suffix entries and exceptions included, not only exact
// names.
func TestEntriesCounted(t *testing.T) {
	h := newHarness(t)
	a := h.write("ads.txt", "||a.example^\n*.b.example\nc.example\n@@||ok.a.example^\n")
	_, stdout, _ := h.apply("--blocklist", a, "--dry-run")
	if !strings.Contains(stdout, "list "+a+": 4 names, +4 -0\n") {
		t.Errorf("first dry run said:\n%s", stdout)
	}
	if code, stdout, stderr := h.apply("--blocklist", a); code != 0 || !strings.Contains(stdout, ": 4 names from 1 lists") {
		t.Fatalf("apply: exit %d\n%s%s", code, stdout, stderr)
	}
	h.write("ads.txt", "||a.example^\n*.d.example\nc.example\n@@||ok.a.example^\n")
	_, stdout, _ = h.apply("--blocklist", a, "--dry-run")
	if !strings.Contains(stdout, "list "+a+": 4 names, +1 -1\n") {
		t.Errorf("dry run after one suffix entry changed said:\n%s", stdout)
	}
	_, stdout, _ = h.run("status", "--state-dir", h.stateDir)
	if !strings.Contains(stdout, a+"  4 names") {
		t.Errorf("status said:\n%s", stdout)
	}
}
