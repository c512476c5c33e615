//go:build linux

// Command bench measures what nftdns costs, against the classic designs and
// against no filter at all, in throwaway network namespaces (root only; the
// machine's own ruleset is never touched):
//
//   - load: `nftdns apply` versus `nft -f` of the same rendered ruleset (and
//     iptables-restore for the classic design): wall time, peak RSS of the
//     loading process, kernel memory per name;
//   - per query: a closed-loop UDP load generator in a client namespace
//     against a box running the design versus an identical box running only
//     the NAT path, in interleaved pairs: qps ratio, CPU per query, losses;
//     for allowed names, blocked names and fresh flows, IPv4 and IPv6.
//
// Topology (topo.go): client -- box A -- upstream and client -- box B --
// upstream, two identical boxes side by side. Box A always runs the "no
// filter" baseline (round-robin DNAT and masquerade, nothing else); box B
// runs the design under test, loaded once per list. A pair is one run
// against A then one against B, so switching costs nothing and a million-name
// ruleset stays loaded. An A/A calibration (the baseline in both boxes)
// shows how far apart the boxes are when they do the same work. The
// upstream is a minimal responder (the query echoed with QR set); the load
// generator and the responder use raw syscalls on locked threads (raw.go).
//
// CPU per query counts this process and the kernel threads (cpuSnap), not
// the whole machine: the packet path runs in softirq charged to our
// threads' syscalls, and other processes on the machine stay out of it.
// qps ratios do feel other processes; the tables show how busy the machine
// was with them ("other load").
//
// Knobs (environment): BENCH=quick, BENCH_OUT, NFTDNS_BIN (a prebuilt
// binary; default: go build into a temp dir), BENCH_PAIRS,
// BENCH_PAIR_DURATION, BENCH_NO_1M_QUERIES=1. Results go to BENCH_OUT
// (default bench-results/): results.md, chart.png, samples.json (every
// sample). Progress goes to stderr.
//
//	go run ./integration/bench              # full run (~30 min)
//	BENCH=quick go run ./integration/bench  # 10k names, < 2 min (CI)
//	BENCH_REPORT=old/samples.json BENCH_OUT=new go run ./integration/bench
//	                                        # re-render the tables and chart only
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if path := os.Getenv("BENCH_REPORT"); path != "" {
		r, err := readResults(path)
		if err == nil {
			err = r.write(configFromEnv().Out)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, configFromEnv())
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
