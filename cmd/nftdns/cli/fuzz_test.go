package cli

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"nftdns/rules"
)

// fuzzConfigPath is where the fuzzed config pretends to live: relative
// paths in it resolve under /fuzz.
const fuzzConfigPath = "/fuzz/nftdns.yaml"

// fuzzLists is a fixed, small blocklist compiled with every fuzzed config
// that validates. The config's own blocklist paths are checked but never
// opened: a fuzzed path may name /dev/random or a FIFO.
func fuzzLists() []*rules.List {
	return []*rules.List{{Path: "fuzz.list", Names: map[string]int{
		"blocked.example":     1,
		"x-abcdefghijklm.com": 2, "abcdefghijklm.com": 3,
		strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61): 4,
	}}}
}

// optionsFromFile merges a parsed config over the flag defaults the way
// resolveOptions does when no flag is given on the command line.
func optionsFromFile(fc *fileConfig) *options {
	o := &options{
		table: defaultTable, stateDir: defaultStateDir, action: defaultAction,
		logRate: defaultLogRate, logBurst: defaultLogBurst,
	}
	set := func(key string, dst *string, v string) {
		if fc.set[key] {
			*dst = v
		}
	}
	set(flagNetns, &o.netns, fc.netns)
	set(flagTable, &o.table, fc.table)
	set(flagStateDir, &o.stateDir, fc.stateDir)
	set(flagAction, &o.action, fc.action)
	set(flagLogRate, &o.logRate, fc.logRate)
	if fc.set[flagSkipInvalid] {
		o.skipInvalid = fc.skipInvalid
	}
	if fc.set[flagLogBurst] {
		o.logBurst = fc.logBurst
	}
	o.listen, o.upstream, o.client, o.blocklist, o.allowlist = fc.listen, fc.upstream, fc.client, fc.blocklist, fc.allowlist
	return o
}

// FuzzConfig feeds arbitrary bytes to the config loader. It must never
// panic; it either refuses the file with an input error (exit 2) that names
// the file, or returns settings that, merged with the defaults, validate
// and compile (or are refused as input errors) without panicking. Settings
// that validate must compile, render in both formats, and survive the
// round trip through the state directory's canonical form that rollback
// takes.
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"# only a comment\n",
		"listen: 198.18.1.1\n",
		"listen: [198.18.1.1, \"2001:db8:1::1\"]\nupstream: [198.51.100.1, \"198.51.100.2:5353\", \"[2001:db8::53]:53\"]\n" +
			"client: [198.18.1.0/24, \"2001:db8:1::/64\"]\nblocklist: [malware.txt, /etc/hosts.txt]\nlog-rate: 1/second\nlog-burst: 100\n",
		"listen: [198.18.1.1]\nupstream: [198.51.100.1]\nclient: [198.18.1.0/24]\ntable: t_1\naction: drop\nskip-invalid: true\n",
		"listen: [\"::ffff:198.18.1.1\"]\nupstream: [\"::ffff:198.51.100.1\"]\nclient: [\"::ffff:198.18.1.0/120\"]\n",
		"listen: [198.18.1.1]\nupstream: [\"198.51.100.1:0\", \"fe80::1%eth0\"]\nclient: [198.18.1.1/24]\n",
		"listen: [0.0.0.0]\nupstream: [198.18.1.1]\nclient: [0.0.0.0/0]\nlog-rate: 4294967296/day\nlog-burst: 4294967296\n",
		"upstreams: [a]\n",
		"dry-run: true\n",
		"table: a\ntable: b\n",
		"client: {a: b}\n",
		"upstream:\n  - {addr: 1}\n",
		"log-burst: -1\n",
		"skip-invalid: maybe\n",
		"- listen\n",
		"listen: [\n",
		"\xef\xbb\xbflisten: 198.18.1.1\r\n",
		"a: &x [1, 2]\nb: *x\n",
		"listen: &a 198.18.1.1\nupstream: *a\n",
		"listen: !!binary aGVsbG8=\n",
		"state-dir: ../../x\nblocklist: \"\"\n",
		"log-burst: 0x10\nlog-rate: 0/second\n",
		"? [a]\n: b\n",
		"--- a\n--- b\n",
		"listen: ~\n",
		"\x00\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fc, err := parseConfig(data, fuzzConfigPath)
		if err != nil {
			code, msg := classify(err)
			if code != exitInput {
				t.Fatalf("config error is not an input error (exit %d): %v", code, err)
			}
			if !strings.Contains(msg, fuzzConfigPath) {
				t.Fatalf("config error does not name the file: %q", msg)
			}
			return
		}
		for key := range fc.set {
			if _, ok := configKeys[key]; !ok {
				t.Fatalf("accepted unknown key %q", key)
			}
		}
		paths := []string{fc.stateDir}
		for _, l := range append(slices.Clone(fc.blocklist), fc.allowlist...) {
			paths = append(paths, l.Path)
		}
		for _, p := range paths {
			if p != "" && !filepath.IsAbs(p) {
				t.Fatalf("path %q not resolved against the config's directory", p)
			}
		}
		o := optionsFromFile(fc)
		s, cs, err := o.settings()
		if err != nil {
			if code, _ := classify(err); code != exitInput {
				t.Fatalf("settings error is not an input error (exit %d): %v", code, err)
			}
			return
		}
		rs, err := rules.Compile(s, fuzzLists())
		if err != nil {
			t.Fatalf("settings validated but do not compile: %v\nconfig: %q", err, data)
		}
		if rs.Render() == "" {
			t.Fatal("empty rendering")
		}
		for _, render := range []func(rules.Settings, []*rules.List) (string, error){rules.RenderIptables, rules.RenderIp6tables} {
			if _, err := render(s, fuzzLists()); err != nil && !rules.IsInputError(err) {
				t.Fatalf("iptables rendering failed with a non-input error: %v", err)
			}
		}
		// What apply records must be what rollback can re-apply.
		back := fromCanonical(cs)
		_, cs2, err := back.settings()
		if err != nil {
			t.Fatalf("recorded settings %+v do not validate again: %v", cs, err)
		}
		if d := cs.Diff(cs2); len(d) != 0 {
			t.Fatalf("recorded settings change on re-reading: %v\nfirst:  %+v\nsecond: %+v", d, cs, cs2)
		}
	})
}
