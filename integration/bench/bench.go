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
	"runtime"
	"slices"
	"time"

	"nftdns/integration/harness"
	"nftdns/nft"
	"nftdns/rules"
)

// bench is one run's state.
type bench struct {
	cfg     config
	topo    *topo
	bin     string
	tmp     string
	nftB    *nft.Conn
	designs []design
	res     *results
	start   time.Time
}

// listCase is one generated list at one size, with its query pools.
type listCase struct {
	Kind     listKind
	N        int
	List     *rules.List
	File     string
	Allowed  [][]byte // queries for names not in the list
	Blocked  [][]byte // queries for listed names
	rendered string   // nft -f file, made on first use
	iptables string   // iptables-restore file, made on first use
}

// poolSize is how many distinct names each run cycles through.
const poolSize = 4096

func (b *bench) progress(format string, args ...any) {
	el := time.Since(b.start).Round(time.Second)
	fmt.Fprintf(os.Stderr, "[%5s] %s\n", el, fmt.Sprintf(format, args...))
}

func run(ctx context.Context, cfg config) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces and nftables)")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	b := &bench{cfg: cfg, designs: designs(cfg), start: time.Now(), res: newResults(cfg)}
	removeStale(ctx)
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return err
	}
	b.tmp, err = os.MkdirTemp("", "nftdns-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(b.tmp)
	// Whatever happens, write what was measured so far.
	defer func() {
		if werr := b.res.write(cfg.Out); werr != nil {
			err = errors.Join(err, werr)
		} else {
			b.progress("results in %s", cfg.Out)
		}
	}()

	if b.bin = cfg.Bin; b.bin == "" {
		b.progress("building nftdns")
		b.bin = filepath.Join(b.tmp, "nftdns")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", b.bin, "nftdns/cmd/nftdns").CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build nftdns/cmd/nftdns: %w: %s", err, out)
		}
	}
	b.progress("creating namespaces")
	if b.topo, err = newTopo(ctx); err != nil {
		return err
	}
	defer func() {
		b.progress("removing namespaces")
		err = errors.Join(err, b.topo.Close())
	}()
	resp, err := startResponder(b.topo.Upstream, append(append([]netip.Addr(nil), upstreams4...), upstreams6...))
	if err != nil {
		return fmt.Errorf("responder: %w", err)
	}
	defer resp.Stop()
	if _, err := shOut(ctx, baselineRuleset(b.topo.A), "ip", "netns", "exec", b.topo.A.NS, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("baseline ruleset: %w", err)
	}
	if err := b.topo.conntrackTimeouts(ctx); err != nil {
		return err
	}
	if b.nftB, err = nft.Open(b.topo.B.NS); err != nil {
		return err
	}
	defer b.nftB.Close()
	if err := b.smoke(ctx); err != nil {
		return err
	}

	for _, d := range b.designs {
		if why := d.Missing(); why != "" {
			b.res.Missing[d.Name] = why
			b.progress("design %s not run: %s", d.Name, why)
		}
	}
	for _, n := range cfg.Sizes {
		for _, k := range listKinds {
			if len(cfg.Kinds) > 0 && !slices.Contains(cfg.Kinds, k.Name) {
				continue
			}
			if err := b.listCase(ctx, k, n); err != nil {
				return err
			}
		}
	}
	return nil
}

// smoke checks the path through both boxes before measuring anything, with
// the baseline ruleset in box B for the time of the check.
func (b *bench) smoke(ctx context.Context) error {
	if _, err := shOut(ctx, baselineRuleset(b.topo.B), "ip", "netns", "exec", b.topo.B.NS, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("baseline ruleset in box B: %w", err)
	}
	defer sh(context.WithoutCancel(ctx), "ip", "netns", "exec", b.topo.B.NS, "nft", "flush", "ruleset")
	q := [][]byte{queryWire("smoke.example")}
	for _, f := range harness.Families {
		for _, sd := range []side{b.topo.A, b.topo.B} {
			s := specFor(b.topo, sd, f, modeAllowed, q, b.cfg)
			s.Warmup, s.Duration, s.Sockets = 50*time.Millisecond, 200*time.Millisecond, 1
			r, err := runGen(ctx, s)
			if err != nil {
				return fmt.Errorf("smoke %s via %s: %w", f, sd.NS, err)
			}
			if r.Answered == 0 {
				return fmt.Errorf("smoke %s via %s: no answers (%d sent)", f, sd.NS, r.TotalSent)
			}
		}
	}
	return nil
}

func (b *bench) listCase(ctx context.Context, k listKind, n int) error {
	b.progress("list %s %d: generating", k.Name, n)
	lc := &listCase{Kind: k, N: n, List: makeList(k, n, uint64(n)), File: filepath.Join(b.tmp, fmt.Sprintf("%s-%d.txt", k.Name, n))}
	if err := writeList(lc.File, lc.List); err != nil {
		return err
	}
	for _, name := range outsideNames(k, lc.List, poolSize, uint64(n)+1) {
		lc.Allowed = append(lc.Allowed, queryWire(name))
	}
	for _, name := range sampleNames(lc.List, poolSize, uint64(n)+2) {
		lc.Blocked = append(lc.Blocked, queryWire(name))
	}
	defer os.Remove(lc.File)
	defer func() {
		if lc.rendered != "" {
			os.Remove(lc.rendered)
		}
		if lc.iptables != "" {
			os.Remove(lc.File + ".iptables")
			os.Remove(lc.File + ".ip6tables")
		}
	}()

	t0 := time.Now()
	rs, err := rules.Compile(b.settingsB(), []*rules.List{lc.List})
	if err != nil {
		return fmt.Errorf("compile %s %d: %w", k.Name, n, err)
	}
	cs := compileSample{List: k.Name, N: n, CompileMs: ms(time.Since(t0)), Stats: rs.Stats, Sets: len(rs.Sets)}
	for _, c := range rs.Chains {
		cs.Rules += len(c.Rules)
		cs.MaxChainRules = max(cs.MaxChainRules, len(c.Rules))
	}
	b.res.Compiles = append(b.res.Compiles, cs)
	rs = nil
	runtime.GC()

	if err := b.loads(ctx, lc); err != nil {
		return err
	}
	for _, d := range b.designs {
		if d.Missing() != "" || !contains(d.Sizes(b.cfg), n) || d.Loaders[0].NA(lc) != "" || d.OnlyList != "" && d.OnlyList != k.Name {
			continue
		}
		if err := b.queries(ctx, d, lc); err != nil {
			return err
		}
	}
	return nil
}

// loads measures every applicable loader of every design, interleaved (the
// order rotates with the repetition), each a fresh load into an empty box.
func (b *bench) loads(ctx context.Context, lc *listCase) error {
	type job struct {
		d design
		l loader
	}
	var jobs []job
	for _, d := range b.designs {
		if d.Missing() != "" {
			continue
		}
		for _, l := range d.Loaders {
			if l.Untimed {
				continue
			}
			if why := l.NA(lc); why != "" {
				b.res.Loads = append(b.res.Loads, loadSample{Design: d.Name, Loader: l.Name, List: lc.Kind.Name, N: lc.N, NA: why})
				continue
			}
			jobs = append(jobs, job{d, l})
		}
	}
	for rep := range b.cfg.LoadReps {
		for i := range jobs {
			j := jobs[(i+rep)%len(jobs)]
			b.progress("load %s %d: %s (rep %d/%d)", lc.Kind.Name, lc.N, j.l.Name, rep+1, b.cfg.LoadReps)
			s := loadSample{Design: j.d.Name, Loader: j.l.Name, List: lc.Kind.Name, N: lc.N, Rep: rep}
			if err := j.d.Reset(ctx, b); err != nil {
				return fmt.Errorf("reset %s: %w", j.d.Name, err)
			}
			if err := sleepCtx(ctx, b.cfg.Settle); err != nil {
				return err
			}
			m0, err := readKernMem()
			if err != nil {
				return err
			}
			r, err := j.l.Load(ctx, b, lc)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s.Err = err.Error()
				b.progress("  failed: %v", err)
				b.res.Loads = append(b.res.Loads, s)
				continue
			}
			if err := sleepCtx(ctx, b.cfg.Settle); err != nil {
				return err
			}
			m1, err := readKernMem()
			if err != nil {
				return err
			}
			s.WallMs, s.MaxRSSKB, s.Mem = ms(r.Wall), r.MaxRSSKB, m1.sub(m0)
			b.res.Loads = append(b.res.Loads, s)
			b.progress("  %.0f ms, peak RSS %d MiB, Slab %+d KiB", s.WallMs, s.MaxRSSKB>>10, s.Mem.Slab>>10)
			if j.l.Reapply {
				r, err := j.l.Load(ctx, b, lc)
				rs := loadSample{Design: j.d.Name, Loader: j.l.Name + " (re-apply)", List: lc.Kind.Name, N: lc.N, Rep: rep,
					WallMs: ms(r.Wall), MaxRSSKB: r.MaxRSSKB, Reapply: true}
				if err != nil {
					rs.Err = err.Error()
				}
				b.res.Loads = append(b.res.Loads, rs)
				b.progress("  re-apply %.0f ms", rs.WallMs)
			}
		}
	}
	for _, d := range b.designs {
		if d.Missing() == "" {
			if err := d.Reset(ctx, b); err != nil {
				return err
			}
		}
	}
	return nil
}

// queries loads the design into box B and runs its per-query cells: for
// each mode and family, Pairs interleaved runs of box A (no filter) then box
// B (the design).
func (b *bench) queries(ctx context.Context, d design, lc *listCase) error {
	b.progress("queries %s %s %d: loading", d.Name, lc.Kind.Name, lc.N)
	if err := d.Reset(ctx, b); err != nil {
		return err
	}
	if _, err := d.Loaders[0].Load(ctx, b, lc); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.res.Failed = append(b.res.Failed, fmt.Sprintf("%s %s %d: load: %v", d.Name, lc.Kind.Name, lc.N, err))
		b.progress("  load failed: %v", err)
		return nil
	}
	defer d.Reset(context.WithoutCancel(ctx), b)
	// Conntrack may only now be loaded for box B.
	if err := b.topo.conntrackTimeouts(ctx); err != nil {
		return err
	}
	for _, mode := range d.Modes(b.cfg, lc.N) {
		pool := lc.Allowed
		if mode == modeBlocked {
			pool = lc.Blocked
		}
		for _, f := range d.Families {
			b.progress("queries %s %s %d: %s %s, %d pairs of %v", d.Name, lc.Kind.Name, lc.N, mode, f, b.cfg.Pairs, b.cfg.PairDur)
			for p := range b.cfg.Pairs {
				for _, sd := range []struct {
					name string
					s    side
				}{{"nofilter", b.topo.A}, {"filter", b.topo.B}} {
					var before uint64
					if sd.name == "filter" && d.Dropped != nil {
						before, _ = d.Dropped(ctx, b, f)
					}
					r, err := runGen(ctx, specFor(b.topo, sd.s, f, mode, pool, b.cfg))
					if err != nil {
						return fmt.Errorf("%s %s %d %s %s: %w", d.Name, lc.Kind.Name, lc.N, mode, f, err)
					}
					qs := newQuerySample(d.Name, lc, mode, f, p, sd.name, r)
					if sd.name == "filter" && d.Dropped != nil {
						after, _ := d.Dropped(ctx, b, f)
						qs.Dropped = after - before
					}
					b.res.Queries = append(b.res.Queries, qs)
					if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
						return err
					}
				}
			}
			b.progress("  %s", b.res.cellSummary(d.Name, lc.Kind.Name, lc.N, mode, f.String()))
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
