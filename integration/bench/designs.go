//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"nftdns/integration/harness"
	"nftdns/rules"
)

// A design is one way of filtering, benchmarked in box B against the
// no-filter baseline in box A. Adding a design is adding an entry to
// designs().
type design struct {
	Name string
	// Missing says why the design cannot run here ("" if it can).
	Missing func() string
	// Loaders measure loading a list into box B; the first one is also
	// how the design is loaded for the per-query cells.
	Loaders []loader
	// Reset removes what the loaders put in box B.
	Reset func(ctx context.Context, b *bench) error
	// Sizes, Modes and Families bound its per-query cells.
	Sizes    func(c config) []int
	Modes    func(c config, n int) []string
	Families []harness.Family
	// Dropped reads the design's drop counter in box B (nil: none).
	Dropped func(ctx context.Context, b *bench, f harness.Family) (uint64, error)
	// OnlyList, if set, limits the per-query cells to that list kind.
	OnlyList string
}

// A loader is one way of loading a list case into box B.
type loader struct {
	Name string
	// NA returns why this loader does not apply to a list case ("" if it
	// does); the report prints "n/a (reason)".
	NA   func(lc *listCase) string
	Load func(ctx context.Context, b *bench, lc *listCase) (childRun, error)
	// Reapply, if set, is measured right after Load, on top of it.
	Reapply bool
	// Untimed loaders are not part of the load measurements.
	Untimed bool
}

func designs(c config) []design {
	nftdns := design{
		Name:    "nftdns",
		Missing: func() string { return "" },
		Loaders: []loader{
			{Name: "nftdns apply", NA: func(*listCase) string { return "" }, Load: loadNftdns, Reapply: true},
			{Name: "nft -f (rendered)", NA: func(lc *listCase) string {
				if lc.Kind.SuffixEvery > 0 {
					return "suffix rules have no nft syntax"
				}
				if lc.Kind.MaxWire > 65 {
					return "names > 65 bytes"
				}
				return ""
			}, Load: loadNftF},
		},
		Reset: func(ctx context.Context, b *bench) error {
			return sh(ctx, "ip", "netns", "exec", b.topo.B.NS, "nft", "flush", "ruleset")
		},
		Sizes: func(c config) []int {
			s := append([]int(nil), c.QuerySizes...)
			if c.Query1M && contains(c.Sizes, 1_000_000) {
				s = append(s, 1_000_000)
			}
			return s
		},
		Modes: func(c config, n int) []string {
			if n >= 1_000_000 {
				return []string{modeAllowed}
			}
			return c.Modes
		},
		Families: harness.Families,
		Dropped:  nftdnsDropped,
	}
	// The A/A calibration: the baseline in box B too. Its ratio shows how
	// far apart the two boxes are when they do the same work.
	flushB := func(ctx context.Context, b *bench) error {
		return sh(ctx, "ip", "netns", "exec", b.topo.B.NS, "nft", "flush", "ruleset")
	}
	calib := design{
		Name:    "no filter (A/A)",
		Missing: func() string { return "" },
		Loaders: []loader{{Name: "baseline", Untimed: true, NA: func(*listCase) string { return "" },
			Load: func(ctx context.Context, b *bench, lc *listCase) (childRun, error) {
				_, err := shOut(ctx, baselineRuleset(b.topo.B), "ip", "netns", "exec", b.topo.B.NS, "nft", "-f", "-")
				return childRun{}, err
			}}},
		Reset: flushB,
		Sizes: func(c config) []int {
			if len(c.Calibrate) == 0 || len(c.QuerySizes) == 0 {
				return nil
			}
			return c.QuerySizes[:1]
		},
		Modes:    func(c config, n int) []string { return c.Calibrate },
		Families: harness.Families,
		OnlyList: listKinds[0].Name,
	}
	nftdns.Reset = flushB
	out := []design{calib, nftdns}
	for _, v := range []struct{ name, restore, restore6 string }{
		{"iptables-nft", "iptables-nft-restore", "ip6tables-nft-restore"},
		{"iptables-legacy", "iptables-legacy-restore", "ip6tables-legacy-restore"},
	} {
		restore, restore6 := v.restore, v.restore6
		out = append(out, design{
			Name: v.name,
			Missing: func() string {
				for _, bin := range []string{restore, restore6} {
					if _, err := exec.LookPath(bin); err != nil {
						return bin + " not installed (apt-get install iptables)"
					}
				}
				return ""
			},
			Loaders: []loader{{Name: restore + " + " + restore6, NA: func(lc *listCase) string {
				if !contains([]int{10_000, 100_000}, lc.N) {
					return "classic design measured at 10k and 100k only"
				}
				if lc.Kind.SuffixEvery > 0 {
					return "the classic design has no suffix entries"
				}
				return ""
			}, Load: func(ctx context.Context, b *bench, lc *listCase) (childRun, error) {
				return loadIptables(ctx, b, lc, restore, restore6)
			}}},
			Reset: func(ctx context.Context, b *bench) error {
				return errors.Join(resetIptables(ctx, b, restore), resetIptables(ctx, b, restore6))
			},
			Sizes:    func(c config) []int { return c.ClassicSz },
			Modes:    func(c config, n int) []string { return c.ClassicMode },
			Families: c.ClassicFams,
			OnlyList: c.ClassicList,
			Dropped: func(ctx context.Context, b *bench, f harness.Family) (uint64, error) {
				return iptablesDropped(ctx, b, f, restore)
			},
		})
	}
	return out
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// settingsB is what box B filters with: its own listen addresses and client
// networks, the three upstreams of each family.
func (b *bench) settingsB() rules.Settings {
	s := rules.Settings{
		Listen:  []netip.Addr{b.topo.B.Listen4, b.topo.B.Listen6},
		Clients: []netip.Prefix{b.topo.B.Net4, b.topo.B.Net6},
	}
	for _, a := range append(append([]netip.Addr(nil), upstreams4...), upstreams6...) {
		s.Upstreams = append(s.Upstreams, netip.AddrPortFrom(a, 53))
	}
	return s
}

// cliArgs are apply's / render's input flags for box B and a list file.
func (b *bench) cliArgs(listFile string) []string {
	args := []string{"--listen", b.topo.B.Listen4.String(), "--listen", b.topo.B.Listen6.String(),
		"--client", b.topo.B.Net4.String(), "--client", b.topo.B.Net6.String()}
	for _, a := range append(append([]netip.Addr(nil), upstreams4...), upstreams6...) {
		args = append(args, "--upstream", a.String())
	}
	return append(args, "--blocklist", listFile)
}

func loadNftdns(ctx context.Context, b *bench, lc *listCase) (childRun, error) {
	args := append([]string{"apply", "--netns", b.topo.B.NS, "--state-dir", filepath.Join(b.tmp, "state")}, b.cliArgs(lc.File)...)
	return runChild(ctx, 10*time.Minute, "", b.bin, args...)
}

// loadNftF loads the ruleset `nftdns render` prints for the same input with
// nft -f in box B. The rendering is made once per list case, untimed.
func loadNftF(ctx context.Context, b *bench, lc *listCase) (childRun, error) {
	if lc.rendered == "" {
		lc.rendered = lc.File + ".nft"
		r, err := runChild(ctx, 10*time.Minute, "", b.bin, append([]string{"render"}, b.cliArgs(lc.File)...)...)
		if err != nil {
			return r, err
		}
		if err := writeFile(lc.rendered, r.Output); err != nil {
			return r, err
		}
	}
	return runChild(ctx, 20*time.Minute, "", "ip", "netns", "exec", b.topo.B.NS, "nft", "-f", lc.rendered)
}

// loadIptables loads the IPv4 then the IPv6 classic ruleset: the wall time
// is the sum, the peak RSS the larger of the two.
func loadIptables(ctx context.Context, b *bench, lc *listCase, restore, restore6 string) (childRun, error) {
	if lc.iptables == "" {
		for _, r := range []struct {
			sfx    string
			render func(rules.Settings, []*rules.List) (string, error)
		}{{".iptables", rules.RenderIptables}, {".ip6tables", rules.RenderIp6tables}} {
			text, err := r.render(b.settingsB(), []*rules.List{lc.List})
			if err != nil {
				return childRun{}, fmt.Errorf("render %s: %w", r.sfx, err)
			}
			if err := writeFile(lc.File+r.sfx, text); err != nil {
				return childRun{}, err
			}
		}
		lc.iptables = lc.File + ".iptables"
	}
	r4, err := runChild(ctx, 20*time.Minute, "", "ip", "netns", "exec", b.topo.B.NS, restore, lc.File+".iptables")
	if err != nil {
		return r4, err
	}
	r6, err := runChild(ctx, 20*time.Minute, "", "ip", "netns", "exec", b.topo.B.NS, restore6, lc.File+".ip6tables")
	return childRun{Wall: r4.Wall + r6.Wall, MaxRSSKB: max(r4.MaxRSSKB, r6.MaxRSSKB)}, err
}

// iptablesDropped reads the packet count of the DROP rule in NFTDNS-BLOCK
// of the family's raw table in box B.
func iptablesDropped(ctx context.Context, b *bench, f harness.Family, restore string) (uint64, error) {
	cmd := strings.Replace(restore, "-restore", "", 1)
	if f == harness.V6 {
		cmd = strings.Replace(cmd, "iptables", "ip6tables", 1)
	}
	out, err := shOut(ctx, "", "ip", "netns", "exec", b.topo.B.NS, cmd, "-t", "raw", "-nvxL", "NFTDNS-BLOCK")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "DROP" {
			var n uint64
			fmt.Sscan(f[0], &n)
			return n, nil
		}
	}
	return 0, nil
}

// resetIptables empties the tables the classic ruleset uses (restoring a
// table without --noflush flushes it), for the nft backend also deleting
// them.
func resetIptables(ctx context.Context, b *bench, restore string) error {
	empty := ""
	for _, t := range []string{"raw", "mangle", "nat", "filter"} {
		empty += "*" + t + "\nCOMMIT\n"
	}
	if _, err := shOut(ctx, empty, "ip", "netns", "exec", b.topo.B.NS, restore); err != nil {
		return err
	}
	for _, t := range []string{"raw", "mangle", "nat", "filter"} {
		for _, c := range []string{"-F", "-X"} {
			_ = sh(ctx, "ip", "netns", "exec", b.topo.B.NS, strings.TrimSuffix(restore, "-restore"), "-t", t, c)
		}
	}
	if strings.Contains(restore, "-nft") {
		return sh(ctx, "ip", "netns", "exec", b.topo.B.NS, "nft", "flush", "ruleset")
	}
	return nil
}

// nftdnsDropped reads nftdns's blocked counter for UDP of a family in box B.
func nftdnsDropped(ctx context.Context, b *bench, f harness.Family) (uint64, error) {
	cs, err := b.nftB.Counters(ctx, rules.DefaultTable)
	if err != nil {
		return 0, err
	}
	return cs[rules.CounterName(rules.CounterBlocked, f.String(), "udp")].Packets, nil
}

// baselineRuleset is box A's "no filter" ruleset: the NAT path of nftdns
// (round-robin DNAT of queries to the listen address, masquerade toward the
// upstreams) without any check.
func baselineRuleset(a side) string {
	m4, m6 := []string{}, []string{}
	for i := range upstreams4 {
		m4 = append(m4, fmt.Sprintf("%d : %s", i, upstreams4[i]))
		m6 = append(m6, fmt.Sprintf("%d : %s", i, upstreams6[i]))
	}
	return fmt.Sprintf(`table inet nofilter {
	comment "bench baseline: the NAT path without the checks"
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip saddr %s ip daddr %s udp dport 53 dnat ip to numgen inc mod %d map { %s }
		ip6 saddr %s ip6 daddr %s udp dport 53 dnat ip6 to numgen inc mod %d map { %s }
	}
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %s ip daddr { %s } masquerade
		ip6 saddr %s ip6 daddr { %s } masquerade
	}
}
`, a.Net4, a.Listen4, len(m4), strings.Join(m4, ", "),
		a.Net6, a.Listen6, len(m6), strings.Join(m6, ", "),
		a.Net4, joinAddrs(upstreams4), a.Net6, joinAddrs(upstreams6))
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func writeFile(path, text string) error { return os.WriteFile(path, []byte(text), 0o600) }
