//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"nftdns/integration/harness"
)

// boxHandles returns the kernel handles of the nftdns table and its chains
// and sets in the box, from `nft -j -t list ruleset`.
func boxHandles(t *testing.T, ns string) map[string]uint64 {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	res, err := harness.Nft(ctx, ns, "-j", "-t", "list", "ruleset")
	if err != nil || res.Code != 0 {
		t.Fatalf("nft list: %v %s", err, res)
	}
	var doc struct {
		Nftables []map[string]struct {
			Family string `json:"family"`
			Table  string `json:"table"`
			Name   string `json:"name"`
			Handle uint64 `json:"handle"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, obj := range doc.Nftables {
		for kind, o := range obj {
			switch {
			case kind == "table" && o.Name == "nftdns":
				out["table"] = o.Handle
			case (kind == "chain" || kind == "set" || kind == "map") && o.Table == "nftdns":
				out[kind+" "+o.Name] = o.Handle
			}
		}
	}
	if out["table"] == 0 {
		t.Fatal("no table inet nftdns in the box")
	}
	return out
}

// TestIncrementalApply: a one-name change to a list is applied as set
// element changes (the table, chain and set handles stay), the new name is
// blocked at once and the removed one answered.
func TestIncrementalApply(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)
	// Filler names of one length, so the change below keeps the structure.
	lines := []string{blockedName}
	for i := range 2000 {
		lines = append(lines, fmt.Sprintf("f%05d.example", i))
	}
	list := writeList(t, "inc.list", lines...)
	res := mustRun(t, ctx, cli, "apply", topo.ApplyArgs(list)...)
	if !strings.Contains(res.Stdout, "full") {
		t.Fatalf("first apply:\n%s", res)
	}
	before := boxHandles(t, topo.Box)

	// "allowed.example" (15 wire bytes, like blocked.example) replaces it.
	lines[0] = allowedName
	if err := os.WriteFile(list, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dry := mustRun(t, ctx, cli, "apply", append(topo.ApplyArgs(list), "--dry-run")...)
	if !strings.Contains(dry.Stdout, "+1 -1\n") || !strings.Contains(dry.Stdout, "apply: incremental, +1 -1 set elements") {
		t.Errorf("dry run:\n%s", dry)
	}
	res = mustRun(t, ctx, cli, "apply", topo.ApplyArgs(list)...)
	if !strings.Contains(res.Stdout, "incremental: +1 -1 elements") {
		t.Fatalf("second apply was not incremental:\n%s", res)
	}
	if after := boxHandles(t, topo.Box); !maps.Equal(after, before) {
		t.Errorf("handles changed:\n%v\nwere\n%v", after, before)
	}
	for _, c := range combos() {
		expectBlocked(t, topo, query(ctx, topo, harness.Query{Name: allowedName, Proto: c.p, Server: listen(c.f), Timeout: blockTimeout}))
		expectAnswered(t, topo, query(ctx, topo, harness.Query{Name: blockedName, Proto: c.p, Server: listen(c.f)}), c.f)
	}

	// After a flush the recorded apply id is gone from the kernel: the
	// next apply notices and applies in full.
	mustRun(t, ctx, cli, "flush")
	lines[1] = "g00000.example"
	if err := os.WriteFile(list, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = mustRun(t, ctx, cli, "apply", topo.ApplyArgs(list)...)
	if !strings.Contains(res.Stdout, "full: table not present") {
		t.Errorf("apply after flush:\n%s", res)
	}
}
