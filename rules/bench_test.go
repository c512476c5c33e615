package rules

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// malwareLike generates n distinct malware-rendezvous-like names: a random
// 4-11 letter label under one of ~100 TLDs (seeded, deterministic).
func malwareLike(n int, seed uint64) *List {
	r := rand.New(rand.NewPCG(seed, 99))
	l := &List{Path: "generated", Names: make(map[string]int, n)}
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

func benchmarkCompile(b *testing.B, n int) {
	l := malwareLike(n, 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile(testSettings(), []*List{l}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompile10k(b *testing.B)  { benchmarkCompile(b, 10_000) }
func BenchmarkCompile100k(b *testing.B) { benchmarkCompile(b, 100_000) }
func BenchmarkCompile1M(b *testing.B)   { benchmarkCompile(b, 1_000_000) }
