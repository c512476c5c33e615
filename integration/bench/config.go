//go:build linux

package main

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"nftdns/integration/harness"
)

// config bounds a run: every loop below iterates over these lists only.
type config struct {
	Quick       bool
	Out         string   // results folder
	Bin         string   // nftdns binary; built into a temp dir if empty
	Kinds       []string // list kinds to run (all if empty)
	Sizes       []int    // list sizes for the load measurements
	QuerySizes  []int    // list sizes with per-query cells (all modes)
	Query1M     bool     // also allowed-name cells at 1M (when 1M is in Sizes)
	LoadReps    int      // load repetitions (median)
	Pairs       int      // interleaved pairs per cell
	PairDur     time.Duration
	Warmup      time.Duration
	Settle      time.Duration // before and after a load, for the Slab reading
	BlockedRate int           // paced rate of blocked-name runs, queries/s
	Families    []harness.Family
	Modes       []string
	ClassicSz   []int    // sizes for the iptables designs
	ClassicMode []string // modes for the iptables designs
	ClassicFams []harness.Family
	ClassicList string   // only this list kind for the iptables designs ("" all)
	Calibrate   []string // modes of the A/A calibration (none: skipped)
	Timeout     time.Duration
}

func configFromEnv() config {
	c := config{
		Out:         "bench-results",
		Bin:         os.Getenv("NFTDNS_BIN"),
		Sizes:       []int{10_000, 100_000, 1_000_000},
		QuerySizes:  []int{10_000, 100_000},
		Query1M:     true,
		LoadReps:    3,
		Pairs:       5,
		PairDur:     2 * time.Second, // 5 pairs of 2 s: the full run stays under 30 min
		Warmup:      300 * time.Millisecond,
		Settle:      1500 * time.Millisecond,
		BlockedRate: 20_000,
		Families:    harness.Families,
		Modes:       []string{modeAllowed, modeBlocked, modeFresh},
		ClassicSz:   []int{10_000, 100_000},
		ClassicMode: []string{modeAllowed},
		ClassicFams: []harness.Family{harness.V4}, // v6 costs the same rules; keeps the run < 30 min
		Calibrate:   []string{modeAllowed, modeBlocked, modeFresh},
		Timeout:     60 * time.Minute,
	}
	if os.Getenv("BENCH") == "quick" {
		c = quickConfig(c)
	}
	if v := os.Getenv("BENCH_OUT"); v != "" {
		c.Out = v
	}
	if n, err := strconv.Atoi(os.Getenv("BENCH_PAIRS")); err == nil && n > 0 {
		c.Pairs = min(n, 50)
	}
	if d, err := time.ParseDuration(os.Getenv("BENCH_PAIR_DURATION")); err == nil && d > 0 {
		c.PairDur = min(d, time.Minute)
	}
	// BENCH_SIZES=1000000 (comma-separated, at most 1M each) limits the
	// list sizes, e.g. to re-measure one size; per-query cells only run at
	// sizes still listed.
	if v := os.Getenv("BENCH_SIZES"); v != "" {
		var sizes []int
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 && n <= 1_000_000 {
				sizes = append(sizes, n)
			}
		}
		if len(sizes) > 0 {
			c.Sizes = sizes
			c.QuerySizes = slices.DeleteFunc(c.QuerySizes, func(n int) bool { return !slices.Contains(sizes, n) })
			c.ClassicSz = slices.DeleteFunc(c.ClassicSz, func(n int) bool { return !slices.Contains(sizes, n) })
		}
	}
	// BENCH_KINDS=adsfx (comma-separated names of list kinds) limits the
	// list kinds.
	if v := os.Getenv("BENCH_KINDS"); v != "" {
		c.Kinds = strings.Split(v, ",")
	}
	if n, err := strconv.Atoi(os.Getenv("BENCH_LOAD_REPS")); err == nil && n > 0 {
		c.LoadReps = min(n, 10)
	}
	if os.Getenv("BENCH_NO_1M_QUERIES") == "1" {
		c.Query1M = false
	}
	return c
}

// quickConfig is the CI smoke run: 10k names, 1 load, 2 pairs of 1 s, the
// classic design only for allowed names over IPv4, no A/A calibration.
func quickConfig(c config) config {
	c.Quick = true
	c.Sizes = []int{10_000}
	c.QuerySizes = []int{10_000}
	c.Query1M = false
	c.LoadReps = 1
	c.Pairs = 2
	c.PairDur = time.Second
	c.Warmup = 100 * time.Millisecond
	c.Settle = 200 * time.Millisecond
	c.ClassicSz = []int{10_000}
	c.ClassicMode = []string{modeAllowed}
	c.ClassicFams = []harness.Family{harness.V4}
	c.ClassicList = "malware"
	c.Calibrate = nil
	c.Timeout = 5 * time.Minute
	return c
}
