//go:build linux

package integration

import (
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// badInput is one broken list or config given to apply. setup writes what
// it needs under dir and returns apply's extra arguments (after the
// topology's addresses and the good list); want is the exact line apply
// prints on stderr, with FILE standing for the path setup returned as
// file.
type badInput struct {
	name   string
	setup  func(t *testing.T, dir string) (file string, args []string)
	noList bool // give no --blocklist on the command line (the config has them)
	code   int
	want   string
}

// Contents used by the table.
var (
	// Not a text file: an ELF header and more binary bytes on line 1.
	badJunk = []byte("\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe\x03\x00>\x00\n\x00\x01\x02\x03 \xc0\x0c\n")
	// 63+63+63+62 letters and 3 dots: 256 bytes in wire form.
	badName256 = strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 62)
	badLabel64 = strings.Repeat("x", 64) + ".example"
)

func badWriteFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// badListCase writes a list file with content and passes it as a second
// --blocklist.
func badListCase(content []byte) func(t *testing.T, dir string) (string, []string) {
	return func(t *testing.T, dir string) (string, []string) {
		p := filepath.Join(dir, "bad.list")
		badWriteFile(t, p, content)
		return p, []string{"--blocklist", p}
	}
}

// badConfigCase writes a config file with content and passes it as --config.
func badConfigCase(content []byte) func(t *testing.T, dir string) (string, []string) {
	return func(t *testing.T, dir string) (string, []string) {
		p := filepath.Join(dir, "bad.yaml")
		badWriteFile(t, p, content)
		return p, []string{"--config", p}
	}
}

func badInputs() []badInput {
	invalidChar := "invalid character (allowed: letters, digits, hyphen, underscore)"
	return []badInput{
		// Lists.
		{name: "binary junk", setup: badListCase(badJunk), code: 2,
			want: fmt.Sprintf("FILE:1: invalid UTF-8: %q", "\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe\x03\x00>\x00")},
		{name: "1 MB line", setup: badListCase([]byte("ok.example\n" + strings.Repeat("a", 1<<20) + "\nlater.example\n")), code: 2,
			want: "FILE:2: line longer than 65536 bytes"},
		{name: "label of 64 bytes", setup: badListCase([]byte("ok.example\n" + badLabel64 + "\n")), code: 2,
			want: fmt.Sprintf("FILE:2: label longer than 63 bytes: %q", badLabel64)},
		{name: "name of 256 wire bytes", setup: badListCase([]byte("ok.example\n# c\n" + badName256 + "\n")), code: 2,
			want: fmt.Sprintf("FILE:3: name longer than 255 bytes in wire format: %q... (%d bytes)", badName256[:80], len(badName256))},
		{name: "invalid UTF-8", setup: badListCase([]byte("ok.example\nbad\xff\xfe.example\n")), code: 2,
			want: fmt.Sprintf("FILE:2: invalid UTF-8: %q", "bad\xff\xfe.example")},
		{name: "NUL inside a name", setup: badListCase([]byte("a\x00b.example\n")), code: 2,
			want: fmt.Sprintf("FILE:1: %s: %q", invalidChar, "a\x00b.example")},
		{name: "invalid internationalized name (Bidi rule)", setup: badListCase([]byte("ok.example\r\nאa.example\r\n")), code: 2,
			want: `FILE:2: invalid internationalized name: idna: invalid label "אa.example": "אa.example"`},
		{name: "empty label", setup: badListCase([]byte("a..example\n")), code: 2,
			want: `FILE:1: empty label: "a..example"`},
		{name: "hosts line without a name", setup: badListCase([]byte("0.0.0.0\n")), code: 2,
			want: `FILE:1: hosts line without a name: "0.0.0.0"`},
		{name: "two names, not a hosts line", setup: badListCase([]byte("a.example b.example\n")), code: 2,
			want: `FILE:1: more than one name on a line that is not a hosts line: "a.example b.example"`},
		{name: "missing file", setup: func(t *testing.T, dir string) (string, []string) {
			p := filepath.Join(dir, "missing.list")
			return p, []string{"--blocklist", p}
		}, code: 2, want: "blocklist: open FILE: no such file or directory"},
		// Root can read a chmod 000 file, so these are the unreadable
		// files that fail for root too.
		{name: "unreadable: dangling symlink", setup: func(t *testing.T, dir string) (string, []string) {
			p := filepath.Join(dir, "dangling.list")
			if err := os.Symlink(filepath.Join(dir, "nowhere", "x"), p); err != nil {
				t.Fatal(err)
			}
			return p, []string{"--blocklist", p}
		}, code: 2, want: "blocklist: open FILE: no such file or directory"},
		{name: "unreadable: path under a file", setup: func(t *testing.T, dir string) (string, []string) {
			f := filepath.Join(dir, "plain.list")
			badWriteFile(t, f, []byte("a.example\n"))
			p := filepath.Join(f, "x")
			return p, []string{"--blocklist", p}
		}, code: 2, want: "blocklist: open FILE: not a directory"},
		{name: "unreadable: read fails (EIO from /proc/self/mem)", setup: func(t *testing.T, dir string) (string, []string) {
			return "/proc/self/mem", []string{"--blocklist", "/proc/self/mem"}
		}, code: 2, want: "blocklist: read FILE: input/output error"},
		{name: "directory as a list", setup: func(t *testing.T, dir string) (string, []string) {
			p := filepath.Join(dir, "dir.list")
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			return p, []string{"--blocklist", p}
		}, code: 2, want: "blocklist: read FILE: is a directory"},
		// Configs.
		{name: "config: unknown key", setup: badConfigCase([]byte("listen: [198.18.1.1]\nupstreams: [198.51.100.1]\n")), code: 2,
			want: `config FILE:2: unknown key "upstreams" (accepted: netns, table, state-dir, skip-invalid, listen, upstream, client, blocklist, allowlist, action, strict, log-rate, log-burst, intercept, block-dot, interface, nflog-group, refresh, health-interval, health-fails, metrics, flush-on-exit)`},
		{name: "config: not YAML (binary)", setup: badConfigCase(badJunk), code: 2,
			want: "config FILE: control characters are not allowed"},
		{name: "config: YAML syntax error", setup: badConfigCase([]byte("listen: [198.18.1.1\nupstream: x\n")), code: 2,
			want: "config FILE: line 1: did not find expected ',' or ']'"},
		{name: "config: not a mapping", setup: badConfigCase([]byte("- listen\n- upstream\n")), code: 2,
			want: "config FILE:1: want a mapping of flag names to values"},
		{name: "config: wrong type (word for an integer)", setup: badConfigCase([]byte("table: nftdns\nlog-burst: lots\n")), code: 2,
			want: `config FILE:2: key "log-burst" wants a non-negative integer`},
		{name: "config: wrong type (mapping for a list)", setup: badConfigCase([]byte("upstream: {a: 1}\n")), code: 2,
			want: `config FILE:1: key "upstream" wants a list`},
		{name: "config: wrong type (list for a string)", setup: badConfigCase([]byte("action: [drop, drop]\n")), code: 2,
			want: `config FILE:1: key "action" wants a single value`},
		{name: "config: command-line-only key", setup: badConfigCase([]byte("dry-run: true\n")), code: 2,
			want: `config FILE:1: key "dry-run" is only a command-line flag`},
		{name: "config: key given twice", setup: badConfigCase([]byte("log-rate: 1/second\nlog-rate: 2/second\n")), code: 2,
			want: `config FILE:2: key "log-rate" given twice`},
		{name: "config: invalid value", setup: badConfigCase([]byte("log-rate: fast\n")), code: 2,
			want: `rate "fast": want N/second, N/minute, N/hour or N/day with N > 0`},
		{name: "config: missing file", setup: func(t *testing.T, dir string) (string, []string) {
			p := filepath.Join(dir, "missing.yaml")
			return p, []string{"--config", p}
		}, code: 2, want: "config: open FILE: no such file or directory"},
		{name: "config: blocklist relative to it is missing", setup: func(t *testing.T, dir string) (string, []string) {
			p := filepath.Join(dir, "rel.yaml")
			badWriteFile(t, p, []byte("blocklist: [nothere.list]\n"))
			return filepath.Join(dir, "nothere.list"), []string{"--config", p}
		}, noList: true, code: 2, want: "blocklist: open FILE: no such file or directory"},
		// A directory or a path under a file is bad input, for --config
		// as for --blocklist.
		{name: "config: a directory", setup: func(t *testing.T, dir string) (string, []string) {
			p := filepath.Join(dir, "dir.yaml")
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			return p, []string{"--config", p}
		}, code: 2, want: "config: read FILE: is a directory"},
		{name: "config: path under a file", setup: func(t *testing.T, dir string) (string, []string) {
			f := filepath.Join(dir, "plain.yaml")
			badWriteFile(t, f, []byte("table: nftdns\n"))
			p := filepath.Join(f, "x")
			return p, []string{"--config", p}
		}, code: 2, want: "config: open FILE: not a directory"},
	}
}

// TestBadInputCorpus: every broken list or config makes apply exit with
// its exact code and one exact error line, and changes nothing: the box's
// `nft list ruleset` stays byte-identical, and so do the applied
// generation and the state directory. An empty list, by contrast, is
// valid and is applied.
func TestBadInputCorpus(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	good := standardList(t)
	apply(t, ctx, topo, cli, good)

	snapshot := func(t *testing.T) (ruleset string, gen harness.Status, tree string) {
		t.Helper()
		rs, err := harness.ListRuleset(ctx, topo.Box)
		if err != nil {
			t.Fatal(err)
		}
		return rs, diffStatus(t, ctx, cli), badStateTree(t, cli.StateDir)
	}
	rs0, st0, tree0 := snapshot(t)
	if !st0.HasGeneration {
		t.Fatalf("no generation after the first apply: %v", st0.Raw)
	}

	for _, tc := range badInputs() {
		t.Run(tc.name, func(t *testing.T) {
			file, extra := tc.setup(t, t.TempDir())
			lists := []string{good}
			if tc.noList {
				lists = nil
			}
			args := append(topo.ApplyArgs(lists...), extra...)
			res, err := cli.Run(ctx, "apply", args...)
			if err != nil {
				t.Fatal(err)
			}
			want := "nftdns: " + strings.ReplaceAll(tc.want, "FILE", file) + "\n"
			if res.Code != tc.code || res.Stderr != want {
				t.Errorf("exit %d, stderr %q\nwant exit %d, stderr %q", res.Code, res.Stderr, tc.code, want)
			}
			if res.Stdout != "" {
				t.Errorf("a refused apply printed on stdout: %q", res.Stdout)
			}
			rs, st, tree := snapshot(t)
			if rs != rs0 {
				t.Errorf("nft list ruleset changed:\nbefore:\n%s\nafter:\n%s", rs0, rs)
			}
			if st.Generation != st0.Generation || fmt.Sprint(st.Raw["hash"]) != fmt.Sprint(st0.Raw["hash"]) {
				t.Errorf("generation changed: %v %v -> %v %v", st0.Generation, st0.Raw["hash"], st.Generation, st.Raw["hash"])
			}
			if tree != tree0 {
				t.Errorf("state directory changed:\nbefore:\n%s\nafter:\n%s", tree0, tree)
			}
		})
	}

	// The good list still blocks after all that.
	expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Server: harness.Listen4, Timeout: blockTimeout}))

	t.Run("empty list is accepted", func(t *testing.T) {
		// An empty list (or one with only comments) is valid: it lists
		// nothing, and apply installs the table with no names.
		empty := filepath.Join(t.TempDir(), "empty.list")
		badWriteFile(t, empty, nil)
		res := mustRun(t, ctx, cli, "apply", topo.ApplyArgs(empty)...)
		if !strings.Contains(res.Stdout, ": 0 names from 1 lists") {
			t.Errorf("apply of an empty list: want 0 names, got %q", res.Stdout)
		}
		st := diffStatus(t, ctx, cli)
		if st.Generation != st0.Generation+1 {
			t.Errorf("generation %v after applying an empty list, want %v", st.Generation, st0.Generation+1)
		}
		expectAnswered(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Server: harness.Listen4}), harness.V4)
	})
}

// badStateTree lists every file under dir with its size and a digest of its
// content, for before/after comparisons.
func badStateTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			fmt.Fprintf(&b, "%s/\n", rel)
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h := fnv.New64a()
		h.Write(data)
		fmt.Fprintf(&b, "%s %d %x\n", rel, len(data), h.Sum64())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
