package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"

	"nftdns/rules"
)

// A listKind generates deterministic lists (and names that are not in
// them, of the same shape) from a seed.
type listKind struct {
	Name string
	Desc string
	gen  func(r *rand.Rand) string
	// MaxWire is the longest wire length the generator can produce; nft -f
	// (1.0.6) can load the rendered ruleset only if it is <= 65.
	MaxWire int
	// SuffixEvery > 0 writes every SuffixEvery-th name as a suffix entry
	// (||name^: the name and everything under it).
	SuffixEvery int
}

var listKinds = []listKind{
	{Name: "malware", Desc: "random 4-11 letter label + one of 100 TLDs", gen: malwareName, MaxWire: 11 + 1 + 5 + 2},
	{Name: "ad", Desc: "2-6 labels, 5-120 wire bytes", gen: adName, MaxWire: 120},
	{Name: "adsfx", Desc: "as ad, one in 3 a suffix entry ||name^", gen: adName, MaxWire: 120, SuffixEvery: 3},
}

// tlds are ~100 TLD-like labels (real ones, for realistic lengths).
var tlds = strings.Fields(`com net org io co info biz xyz top site online club shop store app dev
	me tv cc ru de uk cn jp fr it nl es br in au pl ca ch se no fi dk be at cz hu ro gr pt ie tr
	ua kr tw hk sg my id th vn ph nz za mx ar cl pe us eu asia mobi pro name tech space live life
	world today news blog cloud link click win bid loan work fun icu vip ltd cyou buzz rest bar
	monster uno cam host lat ws su to pw`)

func letters(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
	}
	return string(b)
}

// malwareName is a random 4-11 letter label under one of ~100 TLDs.
func malwareName(r *rand.Rand) string {
	return letters(r, 4+r.IntN(8)) + "." + tlds[r.IntN(len(tlds))]
}

// adName is an ad/tracker-like name: 2-6 labels, wire length spread evenly
// over 5..120 bytes, a real TLD, labels of letters with some digits and
// hyphens (as in real tracker lists: "ads-2.cdn-x9.example.com").
func adName(r *rand.Rand) string {
	for {
		L := 5 + r.IntN(116) // wire length
		tld := tlds[r.IntN(len(tlds))]
		rest := L - 1 - (len(tld) + 1) // bytes for the other labels, length bytes included
		if rest < 2 {
			continue
		}
		k := 1 + r.IntN(5) // other labels
		k = min(k, rest/2)
		// split rest into k parts of >= 2 and <= 64 bytes
		parts := make([]int, k)
		for i := range parts {
			parts[i] = 2
		}
		for left := rest - 2*k; left > 0; {
			i := r.IntN(k)
			if parts[i] < 64 {
				parts[i]++
				left--
			} else if slices.Min(parts) == 64 {
				break
			}
		}
		labels := make([]string, 0, k+1)
		for _, p := range parts {
			labels = append(labels, adLabel(r, p-1))
		}
		name := strings.Join(append(labels, tld), ".")
		if len(name)+2 == L {
			return name
		}
	}
}

// adLabel is n characters: letters, ~1 in 4 labels with a digit run, ~1 in
// 6 with a hyphen inside.
func adLabel(r *rand.Rand, n int) string {
	b := []byte(letters(r, n))
	if n >= 3 && r.IntN(4) == 0 {
		i := r.IntN(n)
		for j := i; j < n && j < i+1+r.IntN(3); j++ {
			b[j] = byte('0' + r.IntN(10))
		}
	}
	if n >= 3 && r.IntN(6) == 0 {
		b[1+r.IntN(n-2)] = '-'
	}
	return string(b)
}

// makeList generates n distinct names of a kind.
func makeList(k listKind, n int, seed uint64) *rules.List {
	r := rand.New(rand.NewPCG(seed, 0x6e6674646e73))
	l := &rules.List{Path: fmt.Sprintf("%s-%d", k.Name, n), Names: make(map[string]int, n)}
	for len(l.Names) < n {
		if name := k.gen(r); l.Names[name] == 0 {
			l.Names[name] = len(l.Names) + 1
		}
	}
	l.Lines = len(l.Names)
	if k.SuffixEvery > 0 {
		// Names keep their line in Names (the pools draw from it); the
		// suffix ones also become entries, as the parser would make them.
		for _, name := range sortedNames(l) {
			if line := l.Names[name]; line%k.SuffixEvery == 0 {
				l.Entries = append(l.Entries, rules.Entry{Name: name, Match: rules.MatchTree, Line: line, Text: "||" + name + "^"})
			}
		}
		for _, e := range l.Entries {
			delete(l.Names, e.Name)
		}
	}
	return l
}

// sortedNames returns the list's names in line order (deterministic).
func sortedNames(l *rules.List) []string {
	line := make(map[string]int, len(l.Names)+len(l.Entries))
	for n, ln := range l.Names {
		line[n] = ln
	}
	for _, e := range l.Entries {
		line[e.Name] = e.Line
	}
	out := make([]string, 0, len(line))
	for n := range line {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b string) int { return line[a] - line[b] })
	return out
}

// writeList writes the names, one per line, in line order.
func writeList(path string, l *rules.List) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for _, n := range sortedNames(l) {
		if _, exact := l.Names[n]; exact {
			w.WriteString(n)
		} else {
			w.WriteString("||" + n + "^")
		}
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// outsideNames returns n names of the same kind (so of realistic length for
// that list) that are not in l: the allowed queries.
func outsideNames(k listKind, l *rules.List, n int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 0xa11))
	out := make([]string, 0, n)
	seen := map[string]bool{}
	suffixes := map[string]bool{}
	for _, e := range l.Entries {
		suffixes[e.Name] = true
	}
	for len(out) < n {
		name := k.gen(r)
		if _, listed := l.Names[name]; listed || seen[name] || underSuffix(suffixes, name) {
			continue
		}
		seen[name] = true
		out = append(out, name)
	}
	return out
}

// sampleNames returns n names of l, spread over the list (the blocked
// queries).
func sampleNames(l *rules.List, n int, seed uint64) []string {
	all := sortedNames(l)
	r := rand.New(rand.NewPCG(seed, 0xb10c))
	out := make([]string, n)
	for i := range out {
		out[i] = all[r.IntN(len(all))]
		if _, exact := l.Names[out[i]]; !exact && r.IntN(2) == 0 && len(out[i]) < 240 {
			out[i] = "x" + strconv.Itoa(i%10) + "." + out[i] // under a suffix entry
		}
	}
	return out
}

// underSuffix reports whether name is one of the suffix entries or under
// one of them.
func underSuffix(suffixes map[string]bool, name string) bool {
	for {
		if suffixes[name] {
			return true
		}
		i := strings.IndexByte(name, '.')
		if i < 0 {
			return false
		}
		name = name[i+1:]
	}
}

// queryWire is a DNS query (RD set, type A, class IN, no EDNS) for name,
// with id 0; the generator patches the id.
func queryWire(name string) []byte {
	b := []byte{0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(label)))
		b = append(b, label...)
	}
	return append(b, 0, 0, 1, 0, 1)
}
