// Command bench measures what programming large blocklists costs: compile
// time, apply time over netlink and kernel memory per name, for generated
// malware-like lists, in a throwaway network namespace (root only). It never
// touches the machine's own ruleset.
//
//	go run ./integration/bench            # 100k and 1M names
//	BENCH=quick go run ./integration/bench # 10k names
package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"nftdns/nft"
	"nftdns/rules"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces)")
	}
	sizes := []int{100_000, 1_000_000}
	if os.Getenv("BENCH") == "quick" {
		sizes = []int{10_000}
	}
	ns := fmt.Sprintf("nftdns-bench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()

	fmt.Printf("| names | compile | apply (netlink) | elements | kernel memory | per name |\n|---|---|---|---|---|---|\n")
	for _, n := range sizes {
		if err := measure(ns, n); err != nil {
			return err
		}
	}
	return nil
}

func measure(ns string, n int) error {
	list := malwareLike(n, 1)
	settings := rules.Settings{
		Listen:    []netip.Addr{netip.MustParseAddr("198.18.1.1")},
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("198.18.2.11:53")},
		Clients:   []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")},
	}
	t0 := time.Now()
	rs, err := rules.Compile(settings, []*rules.List{list})
	if err != nil {
		return err
	}
	compile := time.Since(t0)
	runtime.GC()

	conn, err := nft.Open(ns)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := context.Background()
	if _, err := conn.Flush(ctx, rs.Table); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond) // let RCU free the previous table
	before, err := slabBytes()
	if err != nil {
		return err
	}
	st, err := conn.Apply(ctx, rs)
	if err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	after, err := slabBytes()
	if err != nil {
		return err
	}
	delta := after - before
	fmt.Printf("| %d | %v | %v | %d | %.1f MiB | %d B |\n", n, compile.Round(time.Millisecond),
		st.Duration.Round(time.Millisecond), st.Elements, float64(delta)/(1<<20), delta/int64(n))
	_, err = conn.Flush(ctx, rs.Table)
	return err
}

// slabBytes is the kernel's slab memory (/proc/meminfo Slab), where
// nf_tables keeps set elements.
func slabBytes() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "Slab:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no Slab in /proc/meminfo")
}

// malwareLike makes n distinct names like malware rendezvous domains: a
// random 4-11 letter label under one of ~100 TLD-like labels (seeded).
func malwareLike(n int, seed uint64) *rules.List {
	r := rand.New(rand.NewPCG(seed, 99))
	l := &rules.List{Path: "generated", Names: make(map[string]int, n)}
	for i := 1; len(l.Names) < n; i++ {
		b := make([]byte, 4+r.IntN(8))
		for j := range b {
			b[j] = byte('a' + r.IntN(26))
		}
		name := fmt.Sprintf("%s.tld%d", b, r.IntN(100))
		if _, ok := l.Names[name]; !ok {
			l.Names[name] = i
		}
	}
	return l
}
