//go:build linux

package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestQuickBench runs the quick benchmark (what `BENCH=quick make bench`
// runs) into a temporary folder and checks that it completes and writes its
// files. It asserts no speed. It needs root and runs only when
// NFTDNS_BENCH_QUICK=1 (CI sets it), since it takes about two minutes.
func TestQuickBench(t *testing.T) {
	if os.Getenv("NFTDNS_BENCH_QUICK") != "1" {
		t.Skip("set NFTDNS_BENCH_QUICK=1 to run the quick benchmark")
	}
	if os.Geteuid() != 0 {
		t.Skip("the benchmark needs root (network namespaces and nftables); run with sudo")
	}
	cfg := quickConfig(configFromEnv())
	cfg.Out = t.TempDir()
	if err := run(context.Background(), cfg); err != nil {
		t.Fatalf("quick benchmark: %v", err)
	}
	for _, name := range []string{"results.md", "chart.png", "samples.json"} {
		st, err := os.Stat(filepath.Join(cfg.Out, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Size() == 0 {
			t.Errorf("%s is empty", name)
		}
	}
}
