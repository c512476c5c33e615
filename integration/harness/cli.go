//go:build linux

package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// CLI runs the nftdns binary against a topology's box.
type CLI struct {
	Bin      string // path to the nftdns binary
	NetNS    string // box namespace, passed as --netns
	StateDir string // passed as --state-dir to the commands that keep state
}

// CLI returns a runner for bin that targets this topology's box and keeps
// its state in stateDir.
func (t *Topology) CLI(bin, stateDir string) *CLI {
	return &CLI{Bin: bin, NetNS: t.Box, StateDir: stateDir}
}

// Which global flags each subcommand takes, per the CLI contract: render
// and check are pure and get neither.
var (
	takesNetNS    = map[string]bool{"apply": true, "flush": true, "rollback": true, "status": true}
	takesStateDir = map[string]bool{"apply": true, "rollback": true, "status": true}
)

// Run runs `nftdns SUB [--netns BOX] [--state-dir DIR] args...`. The flags
// go right after the subcommand, before args, because `check` ends with
// positional names. The error is non-nil only if the binary could not be
// run; the exit code is in the result.
func (c *CLI) Run(ctx context.Context, sub string, args ...string) (CmdResult, error) {
	full := []string{sub}
	if takesNetNS[sub] && c.NetNS != "" {
		full = append(full, "--netns", c.NetNS)
	}
	if takesStateDir[sub] && c.StateDir != "" {
		full = append(full, "--state-dir", c.StateDir)
	}
	return Run(ctx, "", c.Bin, append(full, args...)...)
}

// ApplyArgs returns apply's input flags for this topology: both listen
// addresses, all upstreams of both families, both client networks, and the
// given blocklists.
func (t *Topology) ApplyArgs(lists ...string) []string {
	args := []string{"--listen", Listen4.String(), "--listen", Listen6.String()}
	for _, u := range t.Upstreams {
		args = append(args, "--upstream", u.V4.String())
	}
	for _, u := range t.Upstreams {
		args = append(args, "--upstream", u.V6.String())
	}
	args = append(args, "--client", ClientNet4.String(), "--client", ClientNet6.String())
	for _, l := range lists {
		args = append(args, "--blocklist", l)
	}
	return args
}

// Nft runs `ip netns exec NS nft args...`.
func Nft(ctx context.Context, ns string, args ...string) (CmdResult, error) {
	return Run(ctx, "", "ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
}

// NftScript loads an nft script into a namespace (`nft -f -`); it fails on
// a non-zero exit.
func NftScript(ctx context.Context, ns, script string) error {
	_, err := must(ctx, script, "ip", "netns", "exec", ns, "nft", "-f", "-")
	return err
}

// ListRuleset returns `nft list ruleset` of a namespace; it fails on a
// non-zero exit (which is itself a finding: an operator could not list it).
func ListRuleset(ctx context.Context, ns string) (string, error) {
	return must(ctx, "", "ip", "netns", "exec", ns, "nft", "list", "ruleset")
}

// ListRulesetJSON returns `nft -j list ruleset` of a namespace, decoded.
func ListRulesetJSON(ctx context.Context, ns string) (map[string]any, error) {
	out, err := must(ctx, "", "ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset")
	if err != nil {
		return nil, err
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("decode nft -j output: %w", err)
	}
	return v, nil
}

// Tables lists "family name" of every table in an `nft -j list ruleset`
// document.
func Tables(doc map[string]any) []string {
	var out []string
	items, _ := doc["nftables"].([]any)
	for _, it := range items {
		obj, _ := it.(map[string]any)
		if tb, ok := obj["table"].(map[string]any); ok {
			out = append(out, fmt.Sprintf("%v %v", tb["family"], tb["name"]))
		}
	}
	return out
}

// Status is the part of `nftdns status --json` the tests rely on.
type Status struct {
	Generation    float64           // the applied generation
	HasGeneration bool              // whether a generation was found at all
	Counters      map[string]uint64 // named kernel counters, packets
	Raw           map[string]any    // the whole document, for messages
}

// ParseStatus decodes `nftdns status --json`. The JSON shape is provisional
// in the CLI contract, so this is the one place that knows it; it accepts a
// top-level or nested "generation" number and "counters" given either as
// name -> packets, name -> {"packets": N, ...}, or a list of
// {"name": ..., "packets": N} objects.
func ParseStatus(out string) (Status, error) {
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		return Status{}, fmt.Errorf("decode status --json: %w (output %q)", err, out)
	}
	st := Status{Counters: map[string]uint64{}, Raw: raw}
	var walk func(v any, depth int)
	walk = func(v any, depth int) {
		if depth > 6 {
			return
		}
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				lk := strings.ToLower(k)
				switch {
				case lk == "generation" || lk == "applied_generation":
					if n, ok := x.(float64); ok && !st.HasGeneration {
						st.Generation, st.HasGeneration = n, true
					}
				case lk == "counters":
					addCounters(st.Counters, x)
				default:
					walk(x, depth+1)
				}
			}
		case []any:
			for _, x := range v {
				walk(x, depth+1)
			}
		}
	}
	walk(raw, 0)
	return st, nil
}

func addCounters(dst map[string]uint64, v any) {
	packets := func(x any) (uint64, bool) {
		switch x := x.(type) {
		case float64:
			return uint64(x), true
		case map[string]any:
			if p, ok := x["packets"].(float64); ok {
				return uint64(p), true
			}
		}
		return 0, false
	}
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if p, ok := packets(x); ok {
				dst[k] = p
			}
		}
	case []any:
		for _, x := range v {
			obj, _ := x.(map[string]any)
			name, _ := obj["name"].(string)
			if p, ok := packets(obj); ok && name != "" {
				dst[name] = p
			}
		}
	}
}
