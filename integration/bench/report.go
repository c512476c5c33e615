//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"nftdns/integration/harness"
	"nftdns/rules"
)

// results is everything measured, as written to samples.json.
type results struct {
	Started  time.Time         `json:"started"`
	Machine  string            `json:"machine"`
	Config   config            `json:"config"`
	Missing  map[string]string `json:"designs_not_run"`
	Failed   []string          `json:"failed,omitempty"`
	Compiles []compileSample   `json:"compiles"`
	Loads    []loadSample      `json:"loads"`
	Queries  []querySample     `json:"queries"`
}

type compileSample struct {
	List          string      `json:"list"`
	N             int         `json:"n"`
	CompileMs     float64     `json:"compile_ms"`
	Stats         rules.Stats `json:"stats"`
	Sets          int         `json:"sets"`
	Rules         int         `json:"rules"`
	MaxChainRules int         `json:"max_chain_rules"`
}

type loadSample struct {
	Design   string  `json:"design"`
	Loader   string  `json:"loader"`
	List     string  `json:"list"`
	N        int     `json:"n"`
	Rep      int     `json:"rep"`
	Reapply  bool    `json:"reapply,omitempty"`
	WallMs   float64 `json:"wall_ms"`
	MaxRSSKB int64   `json:"max_rss_kb"`
	Mem      kernMem `json:"kernel_mem_delta_bytes"`
	NA       string  `json:"na,omitempty"`
	Err      string  `json:"error,omitempty"`
}

type querySample struct {
	Design string `json:"design"`
	List   string `json:"list"`
	N      int    `json:"n"`
	Mode   string `json:"mode"`
	Family string `json:"family"`
	Pair   int    `json:"pair"`
	Side   string `json:"side"` // "nofilter" (box A) or "filter" (box B)
	genResult
	// QPS is answers per second (allowed, fresh) or queries sent per
	// second (blocked).
	QPS float64 `json:"qps"`
	// CPUus is the CPU spent on the packets (cpuSnap: this process and
	// the kernel threads, all cores) per query in the window, µs; per answer
	// (allowed, fresh) or per query sent (blocked). CPUAllus is the same
	// from /proc/stat, everything busy on the machine.
	CPUus    float64 `json:"cpu_us_per_query"`
	CPUAllus float64 `json:"cpu_all_us_per_query"`
	// Other is the share of the machine's CPU (0..1) busy with something
	// else during the window (other processes): it depresses qps, not µs.
	Other   float64 `json:"other_load"`
	Lost    int64   `json:"lost"`    // whole run: sent - answered
	Dropped uint64  `json:"dropped"` // the design's drop counter over the run (filter side)
}

func newResults(cfg config) *results {
	host, _ := os.Hostname()
	return &results{Started: time.Now(), Config: cfg, Missing: map[string]string{},
		Machine: fmt.Sprintf("%s, %d CPUs, %s", host, runtime.NumCPU(), kernelRelease())}
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return "Linux " + strings.TrimSpace(string(b))
}

func newQuerySample(design string, lc *listCase, mode string, f harness.Family, pair int, side string, r genResult) querySample {
	q := querySample{Design: design, List: lc.Kind.Name, N: lc.N, Mode: mode, Family: f.String(), Pair: pair, Side: side, genResult: r,
		Lost: int64(r.TotalSent) - int64(r.TotalAnswered)}
	count := r.Answered
	if mode == modeBlocked {
		count = r.Sent
	}
	if r.Seconds > 0 {
		q.QPS = float64(count) / r.Seconds
	}
	if r.Seconds > 0 {
		q.Other = max(0, (float64(r.BusyTicks)*1e6/userHZ-r.WorkCPUus)/(r.Seconds*1e6*float64(runtime.NumCPU())))
	}
	if count > 0 {
		q.CPUus = r.WorkCPUus / float64(count)
		q.CPUAllus = float64(r.BusyTicks) * 1e6 / userHZ / float64(count)
	}
	return q
}

// cell is the summary of one (design, list, N, mode, family).
type cell struct {
	Design, List, Mode, Family string
	N                          int
	Ratio                      []float64 // per pair: filter qps / no-filter qps
	CPUA, CPUB                 []float64 // per run, µs per query
	QPSA, QPSB                 []float64
	LostA, LostB               int64
	Other                      []float64
	SentA, SentB               uint64
	DroppedB                   uint64
}

func (r *results) cells() []*cell {
	var out []*cell
	idx := map[string]*cell{}
	byPair := map[string]map[int][2]float64{}
	for _, q := range r.Queries {
		k := fmt.Sprintf("%s|%s|%d|%s|%s", q.Design, q.List, q.N, q.Mode, q.Family)
		c := idx[k]
		if c == nil {
			c = &cell{Design: q.Design, List: q.List, N: q.N, Mode: q.Mode, Family: q.Family}
			idx[k] = c
			byPair[k] = map[int][2]float64{}
			out = append(out, c)
		}
		p := byPair[k][q.Pair]
		c.Other = append(c.Other, q.Other)
		if q.Side == "nofilter" {
			c.CPUA, c.QPSA, c.LostA, c.SentA = append(c.CPUA, q.CPUus), append(c.QPSA, q.QPS), c.LostA+q.Lost, c.SentA+q.TotalSent
			p[0] = q.QPS
		} else {
			c.CPUB, c.QPSB, c.LostB, c.SentB = append(c.CPUB, q.CPUus), append(c.QPSB, q.QPS), c.LostB+q.Lost, c.SentB+q.TotalSent
			c.DroppedB += q.Dropped
			p[1] = q.QPS
		}
		byPair[k][q.Pair] = p
	}
	for k, c := range idx {
		pairs := byPair[k]
		keys := make([]int, 0, len(pairs))
		for i := range pairs {
			keys = append(keys, i)
		}
		slices.Sort(keys)
		for _, i := range keys {
			if p := pairs[i]; p[0] > 0 && p[1] > 0 {
				c.Ratio = append(c.Ratio, p[1]/p[0])
			}
		}
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func spread(v []float64, format string) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf(format+" ["+format+"–"+format+"]", median(v), slices.Min(v), slices.Max(v))
}

func (r *results) cellSummary(design, list string, n int, mode, family string) string {
	for _, c := range r.cells() {
		if c.Design == design && c.List == list && c.N == n && c.Mode == mode && c.Family == family {
			return fmt.Sprintf("ratio %s, µs/query no filter %s, %s %s, lost %d/%d",
				spread(c.Ratio, "%.3f"), spread(c.CPUA, "%.1f"), design, spread(c.CPUB, "%.1f"), c.LostA, c.LostB)
		}
	}
	return "no samples"
}

func humanN(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// markdown renders the tables.
func (r *results) markdown() string {
	var b strings.Builder
	c := r.Config
	fmt.Fprintf(&b, "# nftdns benchmark\n\n%s; started %s; mode %s.\n\n", r.Machine, r.Started.UTC().Format(time.RFC3339), map[bool]string{true: "quick", false: "full"}[c.Quick])
	for _, name := range sortedKeys(r.Missing) {
		fmt.Fprintf(&b, "- **%s not run**: %s\n", name, r.Missing[name])
	}
	for _, f := range r.Failed {
		fmt.Fprintf(&b, "- **failed**: %s\n", f)
	}

	b.WriteString("\n## Lists and compiled rulesets\n\n| list | names | compile | lengths | fold-ambiguous | > 64 B | sets | rules | longest chain |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Compiles {
		fmt.Fprintf(&b, "| %s | %s | %.0f ms | %d | %d | %d | %d | %d | %d rules |\n", s.List, humanN(s.N), s.CompileMs,
			s.Stats.Lengths, s.Stats.Ambiguous, s.Stats.Long, s.Sets, s.Rules, s.MaxChainRules)
	}

	fmt.Fprintf(&b, "\n## Load (median of %d; each a fresh load into an empty box)\n\n", c.LoadReps)
	b.WriteString("| list | names | loader | wall | peak RSS | kernel Slab / name | Slab+vmalloc+percpu / name |\n|---|---:|---|---:|---:|---:|---:|\n")
	type key struct {
		list   string
		n      int
		loader string
	}
	var order []key
	groups := map[key][]loadSample{}
	for _, s := range r.Loads {
		k := key{s.List, s.N, s.Loader}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], s)
	}
	kindIdx := func(name string) int {
		return slices.IndexFunc(listKinds, func(k listKind) bool { return k.Name == name })
	}
	slices.SortStableFunc(order, func(a, b key) int {
		if a.n != b.n {
			return a.n - b.n
		}
		return kindIdx(a.list) - kindIdx(b.list)
	})
	for _, k := range order {
		ss := groups[k]
		if ss[0].NA != "" {
			fmt.Fprintf(&b, "| %s | %s | %s | n/a (%s) | | | |\n", k.list, humanN(k.n), k.loader, ss[0].NA)
			continue
		}
		var wall, rss, slab, all []float64
		var errs []string
		for _, s := range ss {
			if s.Err != "" {
				errs = append(errs, s.Err)
				continue
			}
			wall = append(wall, s.WallMs)
			rss = append(rss, float64(s.MaxRSSKB)/1024)
			slab = append(slab, float64(s.Mem.Slab)/float64(s.N))
			all = append(all, float64(s.Mem.Slab+s.Mem.Vmalloc+s.Mem.Percpu)/float64(s.N))
		}
		if len(wall) == 0 {
			fmt.Fprintf(&b, "| %s | %s | %s | failed: %s | | | |\n", k.list, humanN(k.n), k.loader, oneLine(errs[0]))
			continue
		}
		memCols := fmt.Sprintf("%.0f B | %.0f B", median(slab), median(all))
		if ss[0].Reapply {
			memCols = "n/a (in place) | n/a"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.0f MiB | %s |\n", k.list, humanN(k.n), k.loader, fmtMs(median(wall)), median(rss), memCols)
	}

	fmt.Fprintf(&b, "\n## Per query (%d interleaved pairs of %v per cell: no filter, then the design)\n\n", c.Pairs, c.PairDur)
	b.WriteString("qps ratio = design / no filter, per pair: median [min–max]. µs/query = CPU time of the load generator, the responder and all kernel threads (ksoftirqd, kworkers, RCU), which includes the kernel's forwarding through the boxes: softirq work is charged to the thread whose syscall ran it, on all cores / queries: median [min–max] over the runs. " +
		"Blocked names are sent at a fixed rate (" + fmt.Sprint(c.BlockedRate) + "/s) and the design drops them, so their ratio is n/a and µs/query is per query sent. Lost = sent − answered, all runs of the cell. Other load = median share of the machine's CPU used by other processes during the runs (it lowers qps, hardly µs/query).\n\n")
	b.WriteString("| design | list | names | mode | family | qps ratio | qps no filter | µs/query no filter | µs/query design | Δ µs/query | lost (no filter / design) | other load |\n|---|---|---:|---|---|---|---:|---|---|---:|---|---:|\n")
	for _, cl := range r.cells() {
		ratio := spread(cl.Ratio, "%.3f")
		lost := fmt.Sprintf("%d / %d", cl.LostA, cl.LostB)
		if cl.Mode == modeBlocked {
			ratio = "n/a (paced)"
			lost = fmt.Sprintf("%d / — (%d of %d dropped by the design's counter)", cl.LostA, cl.DroppedB, cl.SentB)
			if cl.DroppedB == 0 {
				lost = fmt.Sprintf("%d / — (%d sent)", cl.LostA, cl.SentB)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %.0f | %s | %s | %+.1f | %s | %.0f%% |\n", cl.Design, cl.List, humanN(cl.N), cl.Mode, cl.Family,
			ratio, median(cl.QPSA), spread(cl.CPUA, "%.1f"), spread(cl.CPUB, "%.1f"), median(cl.CPUB)-median(cl.CPUA), lost, 100*median(cl.Other))
	}
	return b.String()
}

func fmtMs(v float64) string {
	if v >= 10_000 {
		return fmt.Sprintf("%.1f s", v/1000)
	}
	return fmt.Sprintf("%.0f ms", v)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return strings.ReplaceAll(s, "|", "/")
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// readResults loads a samples.json written by an earlier run.
func readResults(path string) (*results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := &results{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// write puts results.md, samples.json and chart.png into dir.
func (r *results) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	md := r.markdown()
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "samples.json"), js, 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	return r.chart(filepath.Join(dir, "chart.png"))
}
