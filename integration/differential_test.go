//go:build linux

package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"nftdns/integration/harness"
)

// Differential test: the kernel's verdict on each query must be the one
// `nftdns check` gives for the same lists and name.
//
// NFTDNS_DIFF_N sets the number of queries (default 2000; 20000 is the
// long mode), NFTDNS_DIFF_SEED the random seed (default: from the clock,
// printed so a failing run can be repeated).
const (
	diffDefaultQueries = 2000
	diffListed         = 2000 // names in the list file
	diffParallel       = 64   // client goroutines in flight
	diffBlockedTimeout = 300 * time.Millisecond
	diffAllowedTimeout = 5 * time.Second
	diffCheckChunk     = 400 // names per `nftdns check` call (argument size)
	diffMaxUDPMessage  = 512 // the harness's upstream servers read at most this
)

// diffLayout is how a query is laid out around its question.
type diffLayout int

const (
	diffPlain        diffLayout = iota // header + question
	diffEDNS                           // + OPT, no options
	diffEDNSOptions                    // + OPT with cookie/NSID/padding/local options
	diffTrailing                       // + junk bytes after the question
	diffEDNSTrailing                   // + OPT with options + junk after it
	diffExtraRR                        // + a TXT record (pointer to the question) [+ OPT]
	diffNumLayouts
)

func (l diffLayout) String() string {
	return [...]string{"plain", "edns", "edns-options", "trailing", "edns-trailing", "extra-rr"}[l]
}

// diffQuery is one query of the run.
type diffQuery struct {
	name   string // as sent, letter case included, no trailing dot
	kind   string // how the name was made: listed, twin, near-*, random
	layout diffLayout
	fam    harness.Family
	proto  harness.Proto
	qtype  uint16
	wire   []byte // the DNS message, without the TCP length prefix

	truth bool   // the generator listed the name (in any case)
	check string // check's verdict line
	block bool   // check says blocked

	answered bool
	upstream int
	err      error
}

func (q *diffQuery) String() string {
	return fmt.Sprintf("%s/%s %s %s layout=%s (%s, %d wire bytes)", q.fam, q.proto,
		dns.TypeToString[q.qtype], q.name, q.layout, q.kind, len(q.name)+2)
}

func diffEnvInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func TestDifferentialKernelVsCheck(t *testing.T) {
	requireRoot(t)
	n := diffEnvInt(t, "NFTDNS_DIFF_N", diffDefaultQueries)
	seed := diffSeed(t)
	t.Logf("seed %d (repeat with NFTDNS_DIFF_SEED=%d), %d queries", seed, seed, n)
	g := newDiffGen(seed)

	// Bounded whatever N is: setup, check, and the queries at
	// diffParallel in flight, most of them far below their timeout.
	ctx := testCtx(t, 2*time.Minute+time.Duration(n)*10*time.Millisecond)
	start := time.Now()
	topo := newTopo(t, ctx)
	cli := cliFor(t, topo)

	listed := g.listedNames(diffListed)
	listPath := filepath.Join(t.TempDir(), "diff.list")
	if err := os.WriteFile(listPath, g.listFile(listed), 0o644); err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, topo, cli, listPath)
	inList := map[string]bool{}
	for _, name := range listed {
		inList[name] = true
	}

	qs := g.queries(n, listed, inList)
	diffRunCheck(t, ctx, cli, listPath, qs)
	// The generator's own truth is a third opinion: it tells a check bug
	// from a kernel bug.
	for _, q := range qs {
		if q.block != q.truth {
			t.Errorf("check disagrees with the generated list: %s: check says %q, listed=%v", q, q.check, q.truth)
		}
	}
	t.Logf("setup and check: %v", time.Since(start).Round(time.Millisecond))

	diffCompare(t, ctx, topo, cli, qs, seed, start)
}

// diffCompare sends the queries and compares what the kernel did with what
// check said, query by query, and the blocked counters with the blocked
// UDP queries.
func diffCompare(t *testing.T, ctx context.Context, topo *harness.Topology, cli *harness.CLI, qs []*diffQuery, seed uint64, start time.Time) {
	diffSendAll(ctx, topo, qs)
	// A query that leaked past a short blocked timeout may still be on its
	// way to the log.
	time.Sleep(time.Second)

	type key struct {
		qname string
		fam   harness.Family
		proto harness.Proto
	}
	logged := map[key]int{}
	for _, r := range topo.Log.All() {
		logged[key{r.QName, r.Family, r.Proto}]++
	}
	sent := map[key]int{}
	for _, q := range qs {
		sent[key{q.name + ".", q.fam, q.proto}]++
	}

	var disagree []string
	stats := map[string]int{}
	for _, q := range qs {
		k := key{q.name + ".", q.fam, q.proto}
		reached := logged[k]
		var bad string
		switch {
		case q.block && (q.answered || reached > 0):
			bad = fmt.Sprintf("check says %q, but the kernel let it through (answered=%v upstream-%d, %d upstream log entries)", q.check, q.answered, q.upstream, reached)
		case q.block && q.err != nil && !diffIsTimeout(q.err):
			bad = fmt.Sprintf("check says %q; no answer, but not a timeout either: %v", q.check, q.err)
		case !q.block && (!q.answered || q.upstream == 0):
			bad = fmt.Sprintf("check says %q, but the kernel dropped it (answered=%v, err=%v, %d upstream log entries)", q.check, q.answered, q.err, reached)
		case !q.block && reached != sent[k]:
			bad = fmt.Sprintf("check says %q; sent %d time(s) but the upstreams logged it %d time(s)", q.check, sent[k], reached)
		}
		if bad != "" {
			disagree = append(disagree, fmt.Sprintf("%s: %s\n    wire %x", q, bad, q.wire))
		}
		if strings.HasPrefix(q.check, "not checkable") {
			stats["not checkable by check (leading hyphen)"]++
		}
		verdict := "allowed"
		if q.block {
			verdict = "blocked"
		}
		stats[verdict]++
		stats[verdict+" "+q.kind]++
		stats[fmt.Sprintf("%s/%s", q.fam, q.proto)]++
		stats["layout "+q.layout.String()]++
		stats[fmt.Sprintf("%s wire>200", verdict)] += diffB2I(len(q.name)+2 > 200)
		stats[fmt.Sprintf("%s wire 60-70", verdict)] += diffB2I(len(q.name)+2 >= 60 && len(q.name)+2 <= 70)
	}
	// Blocked UDP queries are dropped exactly once each (TCP segments are
	// retransmitted, so their counters run higher).
	st := diffStatus(t, ctx, cli)
	for _, f := range harness.Families {
		want := 0
		for _, q := range qs {
			want += diffB2I(q.block && q.fam == f && q.proto == harness.UDP)
		}
		name := fmt.Sprintf("blocked_%s_udp", f)
		if got := st.Counters[name]; got != uint64(want) {
			t.Errorf("counter %s = %d, want %d (the blocked %s UDP queries)", name, got, want, f)
		}
	}
	if m := st.Counters["malformed"]; m != 0 {
		t.Errorf("counter malformed = %d, want 0: every query here is well formed", m)
	}

	keys := make([]string, 0, len(stats))
	for k := range stats {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sum strings.Builder
	fmt.Fprintf(&sum, "differential: %d queries sent, %d blocked, %d allowed, %d disagreements, %v (seed %d)",
		len(qs), stats["blocked"], stats["allowed"], len(disagree), time.Since(start).Round(time.Millisecond), seed)
	for _, k := range keys {
		if k != "blocked" && k != "allowed" {
			fmt.Fprintf(&sum, "\n  %-28s %d", k, stats[k])
		}
	}
	t.Log(sum.String())
	if len(disagree) > 0 {
		const show = 30
		t.Errorf("%d disagreements between the kernel and nftdns check (seed %d); first %d:\n%s",
			len(disagree), seed, min(show, len(disagree)), strings.Join(disagree[:min(show, len(disagree))], "\n"))
	}
}

// diffSeed is NFTDNS_DIFF_SEED, or one from the clock.
func diffSeed(t *testing.T) uint64 {
	t.Helper()
	v := os.Getenv("NFTDNS_DIFF_SEED")
	if v == "" {
		return uint64(time.Now().UnixNano())
	}
	s, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("NFTDNS_DIFF_SEED=%q: %v", v, err)
	}
	return s
}

func diffB2I(b bool) int {
	if b {
		return 1
	}
	return 0
}

func diffIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func diffStatus(t *testing.T, ctx context.Context, cli *harness.CLI) harness.Status {
	t.Helper()
	res := mustRun(t, ctx, cli, "status", "--json")
	st, err := harness.ParseStatus(res.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// diffRunCheck asks `nftdns check` about every distinct name sent, in chunks
// that keep the command line small, and stores the verdicts in qs.
func diffRunCheck(t *testing.T, ctx context.Context, cli *harness.CLI, list string, qs []*diffQuery) {
	t.Helper()
	var names []string
	seen := map[string]bool{}
	for _, q := range qs {
		// `nftdns check` refuses any NAME that starts with a hyphen as a
		// misplaced flag, even after "--", although such names are valid
		// list entries: for those the generator's truth stands in.
		if !seen[q.name] && !strings.HasPrefix(q.name, "-") {
			seen[q.name] = true
			names = append(names, q.name)
		}
	}
	verdict := map[string]string{}
	for chunk := range slices.Chunk(names, diffCheckChunk) {
		res := mustRun(t, ctx, cli, "check", append([]string{"--blocklist", list}, chunk...)...)
		sc := bufio.NewScanner(strings.NewReader(res.Stdout))
		for sc.Scan() {
			name, v, ok := strings.Cut(sc.Text(), ": ")
			if !ok {
				t.Fatalf("check printed an unexpected line %q", sc.Text())
			}
			verdict[name] = v
		}
	}
	prefix := "blocked by " + list + ":"
	for _, q := range qs {
		if strings.HasPrefix(q.name, "-") {
			q.block, q.check = q.truth, fmt.Sprintf("not checkable (leading hyphen); generated as listed=%v", q.truth)
			continue
		}
		v, ok := verdict[q.name]
		switch {
		case !ok:
			t.Fatalf("check said nothing about %q", q.name)
		case strings.HasPrefix(v, prefix):
			q.block = true
		case v == "not listed", strings.HasPrefix(v, "allowed by "+list+":"):
		default:
			t.Fatalf("check: unexpected verdict %q for %q", v, q.name)
		}
		q.check = v
	}
}

// diffSendAll sends every query from the client namespace, diffParallel at a
// time, with a short timeout for the ones check says are blocked.
func diffSendAll(ctx context.Context, topo *harness.Topology, qs []*diffQuery) {
	sem := make(chan struct{}, diffParallel)
	var wg sync.WaitGroup
	for _, q := range qs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			timeout := diffAllowedTimeout
			if q.block {
				timeout = diffBlockedTimeout
			}
			m, err := diffRawExchange(ctx, topo.Client, q.proto, netip.AddrPortFrom(listen(q.fam), 53), q.wire, timeout)
			q.err = err
			if m != nil {
				q.answered = true
				q.upstream = harness.UpstreamFromAnswer(m)
			}
		}()
	}
	wg.Wait()
}

// diffRawExchange sends one DNS message as given (over TCP with its length
// prefix, in one write) from namespace ns and waits for the response with
// the same id.
func diffRawExchange(ctx context.Context, ns string, p harness.Proto, server netip.AddrPort, wire []byte, timeout time.Duration) (*dns.Msg, error) {
	deadline := time.Now().Add(timeout)
	var conn net.Conn
	err := harness.Do(ns, func() error {
		d := net.Dialer{Deadline: deadline}
		var err error
		conn, err = d.DialContext(ctx, string(p), server.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	return harness.RoundTrip(conn, p, wire, binary.BigEndian.Uint16(wire))
}

// diffGen makes the names, the list file and the queries of one run from
// one seed.
type diffGen struct{ r *rand.Rand }

func newDiffGen(seed uint64) *diffGen {
	return &diffGen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

const (
	diffLetters = "abcdefghijklmnopqrstuvwxyz"
	diffChars   = diffLetters + "0123456789-_"
	// Digits and hyphens are what folding with |0x20 confuses with
	// length bytes (13, 16-25, 45, 48-57): names made of them have fold
	// twins.
	diffTwinChars = "-0123456789-ab"
)

var diffTwinLens = []int{1, 2, 13, 16, 17, 20, 25, 33, 34, 45, 48, 50, 57}

// wireLen picks a wire length: a quarter around the 64/65-byte set key
// limit, a quarter above 200, the rest spread out.
func (g *diffGen) wireLen() int {
	switch g.r.IntN(8) {
	case 0, 1:
		return 58 + g.r.IntN(14) // 58..71
	case 2, 3:
		return 200 + g.r.IntN(56) // 200..255
	case 4:
		return 3 + g.r.IntN(28)
	default:
		return 3 + g.r.IntN(253)
	}
}

func (g *diffGen) char(set string) byte { return set[g.r.IntN(len(set))] }

// randomName returns a valid name of exactly w wire bytes (3 <= w <= 255).
func (g *diffGen) randomName(w int) string {
	rest := w - 1 // the terminating zero
	var labels []string
	for rest > 0 {
		maxN := min(63, rest-1)
		var n int
		switch {
		case rest-1 <= 63 && g.r.IntN(3) == 0:
			n = rest - 1 // finish with one label
		case g.r.IntN(2) == 0:
			n = 1 + g.r.IntN(min(maxN, 12))
		default:
			n = 1 + g.r.IntN(maxN)
		}
		if rest-(n+1) == 1 { // a single byte left cannot be a label
			n--
			if n == 0 {
				n = 2
			}
		}
		b := make([]byte, n)
		for i := range b {
			if g.r.IntN(10) < 7 {
				b[i] = g.char(diffLetters)
			} else {
				b[i] = g.char(diffChars)
			}
		}
		labels = append(labels, string(b))
		rest -= n + 1
	}
	return strings.Join(labels, ".")
}

// twinRichName returns a name of digits, hyphens and a few letters, with
// label lengths whose bytes fold like hyphens and digits.
func (g *diffGen) twinRichName() string {
	var labels []string
	total := 1
	for k := 0; k < 2+g.r.IntN(5); k++ {
		n := diffTwinLens[g.r.IntN(len(diffTwinLens))]
		if total+n+1 > 255 {
			break
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = g.char(diffTwinChars)
		}
		labels = append(labels, string(b))
		total += n + 1
	}
	if len(labels) == 0 {
		return "a-0.b-1"
	}
	return strings.Join(labels, ".")
}

// diffValidName reports whether s is a valid lowercase name by the README's
// rules: labels of 1-63 letters, digits, hyphens or underscores; at most
// 255 wire bytes.
func diffValidName(s string) bool {
	if s == "" || len(s)+2 > 255 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			if !strings.ContainsRune(diffChars, rune(l[i])) {
				return false
			}
		}
	}
	return true
}

// diffWireOf is the wire form of a name.
func diffWireOf(name string) []byte {
	var b []byte
	for _, l := range strings.Split(name, ".") {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0)
}

// diffFoldTwins returns the other valid names whose wire bytes, each ORed with
// 0x20 except the final zero, equal those of name: the names a plain fold
// cannot tell from it. At most limit are returned.
func diffFoldTwins(name string, limit int) []string {
	w := diffWireOf(name)
	f := make([]byte, len(w))
	for i, c := range w {
		f[i] = c | 0x20
	}
	f[len(w)-1] = 0
	labelChar := func(c byte) (byte, bool) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
			return c, true
		case c == '_'|0x20:
			return '_', true
		}
		return 0, false
	}
	var out []string
	var walk func(p int, labels []string)
	walk = func(p int, labels []string) {
		if len(out) >= limit {
			return
		}
		if p == len(w)-1 {
			if s := strings.Join(labels, "."); s != name {
				out = append(out, s)
			}
			return
		}
		for _, n := range []int{int(f[p]), int(f[p]) - 0x20} {
			if n < 1 || n > 63 || p+1+n > len(w)-1 {
				continue
			}
			lab := make([]byte, n)
			ok := true
			for i := 0; i < n && ok; i++ {
				lab[i], ok = labelChar(f[p+1+i])
			}
			if ok {
				walk(p+1+n, append(slices.Clip(labels), string(lab)))
			}
		}
	}
	walk(0, nil)
	return out
}

// listedNames returns n distinct valid names: mostly random, some made to
// have fold twins, with some twin pairs listed together.
func (g *diffGen) listedNames(n int) []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		// A name that reads as an address would turn its line into a
		// hosts line; hosts boilerplate names are ignored on those.
		if _, err := netip.ParseAddr(s); err == nil || s == "localhost" || s == "local" || s == "broadcasthost" {
			return
		}
		if len(out) < n && diffValidName(s) && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for tries := 0; len(out) < n && tries < 50*n; tries++ {
		switch g.r.IntN(10) {
		case 0:
			s := g.twinRichName()
			add(s)
			if tw := diffFoldTwins(s, 4); len(tw) > 0 && g.r.IntN(3) == 0 {
				add(tw[g.r.IntN(len(tw))]) // both twins listed
			}
		default:
			add(g.randomName(g.wireLen()))
		}
	}
	return out
}

// listFile writes the names in the formats the README accepts: plain,
// upper or mixed case, trailing dot, hosts lines (one or several names),
// comments, blank lines, CRLF, a BOM, duplicates.
func (g *diffGen) listFile(names []string) []byte {
	var b strings.Builder
	b.WriteString("\xef\xbb\xbf# differential test list\n")
	for i := 0; i < len(names); i++ {
		n := names[i]
		eol := "\n"
		if g.r.IntN(10) == 0 {
			eol = "\r\n"
		}
		switch g.r.IntN(20) {
		case 0, 1:
			b.WriteString(strings.ToUpper(n))
		case 2, 3:
			b.WriteString(g.randomCase(n))
		case 4, 5:
			b.WriteString(n + ".")
		case 6, 7:
			b.WriteString("0.0.0.0 " + n)
		case 8:
			if i+1 < len(names) {
				b.WriteString("127.0.0.1\t" + n + " " + names[i+1] + " # two")
				i++
			} else {
				b.WriteString(n)
			}
		case 9:
			b.WriteString("::1 " + n + " localhost")
		case 10:
			b.WriteString(n + " # trailing comment")
		case 11:
			b.WriteString(n + eol + "# a comment" + eol + eol + n) // duplicate
		default:
			b.WriteString(n)
		}
		b.WriteString(eol)
	}
	return []byte(b.String())
}

// nearMiss derives an unlisted-looking name from a listed one: one byte
// changed (often around the 64-byte key limit, the staged chunks or the
// end), a dot moved, a label added or removed, a shared prefix or suffix.
func (g *diffGen) nearMiss(n string) (string, string) {
	b := []byte(n)
	pos := func() int {
		// Presentation index i is wire offset i+1.
		hot := []int{62, 63, 64, 65, 66, 111, 112, 113, 159, 160, 161, 207, 208, 209, len(b) - 1, len(b) - 2, 0}
		if g.r.IntN(2) == 0 {
			if i := hot[g.r.IntN(len(hot))] - 1; i >= 0 && i < len(b) {
				return i
			}
		}
		return g.r.IntN(len(b))
	}
	switch g.r.IntN(8) {
	case 0, 1: // one byte changed
		i := pos()
		if b[i] == '.' {
			b[i] = g.char(diffChars) // joins two labels: a length byte changes
		} else {
			c := g.char(diffChars + ".")
			for c == b[i] {
				c = g.char(diffChars + ".")
			}
			b[i] = c
		}
		return string(b), "near-byte"
	case 2: // a label added in front
		return g.randomName(3+g.r.IntN(10)) + "." + n, "near-prefix-label"
	case 3: // a label added at the end
		return n + "." + g.randomName(3+g.r.IntN(4)), "near-suffix-label"
	case 4: // first or last label removed
		labels := strings.Split(n, ".")
		if len(labels) < 2 {
			return n + "x", "near-longer"
		}
		if g.r.IntN(2) == 0 {
			return strings.Join(labels[1:], "."), "near-drop-first"
		}
		return strings.Join(labels[:len(labels)-1], "."), "near-drop-last"
	case 5: // shares a prefix: last byte dropped or one added
		if g.r.IntN(2) == 0 && len(n) > 1 {
			return n[:len(n)-1], "near-shorter"
		}
		return n + string(g.char(diffChars)), "near-longer"
	case 6: // shares a suffix: first byte dropped or one added
		if g.r.IntN(2) == 0 && len(n) > 1 {
			return n[1:], "near-suffix-shorter"
		}
		return string(g.char(diffChars)) + n, "near-suffix-longer"
	default: // a case variant of a near miss of the case-folded kind
		i := pos()
		if b[i] >= 'a' && b[i] <= 'z' {
			b[i] = 'a' + (b[i]-'a'+1)%26
		} else {
			b[i] = 'x'
		}
		return string(b), "near-letter"
	}
}

// queries builds n queries: listed names in random case, fold twins and
// near misses of listed names, and random names.
func (g *diffGen) queries(n int, listed []string, inList map[string]bool) []*diffQuery {
	var twinSrc []string
	for _, s := range listed {
		if strings.Trim(s, "-0123456789ab.") == "" { // made by twinRichName
			twinSrc = append(twinSrc, s)
		}
	}
	qs := make([]*diffQuery, 0, n)
	for len(qs) < n {
		var name, kind string
		switch k := g.r.IntN(20); {
		case k < 8:
			name, kind = listed[g.r.IntN(len(listed))], "listed"
		case k < 10 && len(twinSrc) > 0:
			tw := diffFoldTwins(twinSrc[g.r.IntN(len(twinSrc))], 8)
			if len(tw) == 0 {
				continue
			}
			name, kind = tw[g.r.IntN(len(tw))], "twin"
		case k < 15:
			name, kind = g.nearMiss(listed[g.r.IntN(len(listed))])
		default:
			name, kind = g.randomName(g.wireLen()), "random"
		}
		name = strings.ToLower(name)
		if !diffValidName(name) {
			continue
		}
		switch g.r.IntN(10) {
		case 0:
		case 1:
			name = strings.ToUpper(name)
		default:
			name = g.randomCase(name)
		}
		q := &diffQuery{
			name:   name,
			kind:   kind,
			layout: diffLayout(g.r.IntN(int(diffNumLayouts))),
			fam:    harness.Families[g.r.IntN(2)],
			proto:  harness.Protos[g.r.IntN(2)],
			qtype:  []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeMX}[g.r.IntN(4)],
			truth:  inList[strings.ToLower(name)],
		}
		q.wire = g.message(q)
		qs = append(qs, q)
	}
	return qs
}

// message lays out the query: a header (QR=0, OPCODE=0, QDCOUNT=1,
// random RD/CD/AD), the question, then the layout's extras, within the 512
// bytes the upstream servers read.
func (g *diffGen) message(q *diffQuery) []byte {
	flags := uint16(0)
	if g.r.IntN(4) != 0 {
		flags |= 1 << 8 // RD
	}
	if g.r.IntN(4) == 0 {
		flags |= 1 << 4 // CD
	}
	if g.r.IntN(4) == 0 {
		flags |= 1 << 5 // AD
	}
	arcount := 0
	var extra []byte
	opt := func(withOptions bool) []byte {
		b := []byte{0, 0, 41} // root, TYPE OPT
		b = binary.BigEndian.AppendUint16(b, uint16(512+g.r.IntN(3585)))
		ttl := uint32(0)
		if g.r.IntN(2) == 0 {
			ttl |= 1 << 15 // DO
		}
		b = binary.BigEndian.AppendUint32(b, ttl)
		var rdata []byte
		if withOptions {
			for range 1 + g.r.IntN(3) {
				var code uint16
				var data []byte
				switch g.r.IntN(4) {
				case 0:
					code, data = 10, g.bytes(8) // client cookie
				case 1:
					code = 3 // NSID request
				case 2:
					code, data = 12, make([]byte, g.r.IntN(40)) // padding
				default:
					code, data = uint16(65001+g.r.IntN(500)), g.bytes(g.r.IntN(40)) // local use
				}
				rdata = binary.BigEndian.AppendUint16(rdata, code)
				rdata = binary.BigEndian.AppendUint16(rdata, uint16(len(data)))
				rdata = append(rdata, data...)
			}
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(rdata)))
		arcount++
		return append(b, rdata...)
	}
	switch q.layout {
	case diffEDNS:
		extra = opt(false)
	case diffEDNSOptions:
		extra = opt(true)
	case diffTrailing:
		extra = g.bytes(1 + g.r.IntN(40))
	case diffEDNSTrailing:
		extra = append(opt(true), g.bytes(1+g.r.IntN(40))...)
	case diffExtraRR:
		// TXT record named by a pointer to the question name.
		rr := []byte{0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60}
		txt := g.bytes(g.r.IntN(30))
		rr = binary.BigEndian.AppendUint16(rr, uint16(len(txt)+1))
		rr = append(rr, byte(len(txt)))
		rr = append(rr, txt...)
		arcount++
		extra = rr
		if g.r.IntN(2) == 0 {
			extra = append(extra, opt(g.r.IntN(2) == 0)...)
		}
	}
	b := binary.BigEndian.AppendUint16(nil, uint16(g.r.Uint32()))
	b = binary.BigEndian.AppendUint16(b, flags)
	b = append(b, 0, 1, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(arcount))
	b = append(b, diffWireOf(q.name)...)
	b = binary.BigEndian.AppendUint16(b, q.qtype)
	b = append(b, 0, 1) // class IN
	if len(b)+len(extra) > diffMaxUDPMessage {
		q.layout = diffPlain
		binary.BigEndian.PutUint16(b[10:], 0)
		return b
	}
	return append(b, extra...)
}

func (g *diffGen) bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.r.UintN(256))
	}
	return b
}

// randomCase flips each letter's case at random, from the run's seed.
func (g *diffGen) randomCase(s string) string {
	b := []byte(s)
	for i, c := range b {
		if (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') && g.r.IntN(2) == 1 {
			b[i] = c ^ 0x20
		}
	}
	return string(b)
}
