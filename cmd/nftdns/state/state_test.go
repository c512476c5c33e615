package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testSettings() Settings {
	return Settings{
		Table:     "nftdns",
		Listen:    []string{"198.18.0.1"},
		Upstreams: []string{"198.51.100.1:53"},
		Clients:   []string{"198.18.0.0/24"},
		Action:    "drop",
		LogRate:   "1/second",
		LogBurst:  100,
	}
}

func commit(t *testing.T, s *Store, m Meta, lists ...ListFile) *Generation {
	t.Helper()
	st, err := s.Stage(m, lists)
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	g, err := st.Commit()
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return g
}

func TestRotationKeepsNewest(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "state")
	s, err := Open(root, "nftdns")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 8; i++ {
		g := commit(t, s, Meta{Settings: testSettings()}, ListFile{Path: "/x/a.txt", Data: fmt.Appendf(nil, "n%d.example\n", i), Names: 1})
		if g.Seq != i {
			t.Fatalf("commit %d got seq %d", i, g.Seq)
		}
	}
	gens, err := s.Generations()
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int
	for _, g := range gens {
		seqs = append(seqs, g.Seq)
	}
	if fmt.Sprint(seqs) != "[4 5 6 7 8]" {
		t.Errorf("kept %v, want [4 5 6 7 8]", seqs)
	}
	cur, err := s.Current()
	if err != nil || cur.Seq != 8 {
		t.Fatalf("Current = %v, %v; want 8", cur, err)
	}
	prev, err := s.Previous()
	if err != nil || prev.Seq != 7 {
		t.Fatalf("Previous = %v, %v; want 7", prev, err)
	}
	b, err := prev.ListData(0)
	if err != nil || string(b) != "n7.example\n" {
		t.Errorf("ListData = %q, %v", b, err)
	}
	for _, dir := range []string{root, s.Dir} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s mode %v, want 0700", dir, fi.Mode().Perm())
		}
	}
}

func TestDiscardLeavesNothing(t *testing.T) {
	t.Parallel()
	s, _ := Open(t.TempDir(), "t")
	first := commit(t, s, Meta{Settings: testSettings()}, ListFile{Path: "/x/a.txt", Data: []byte("a.example\n")})
	before := listTree(t, s.Dir)

	st, err := s.Stage(Meta{Settings: testSettings()}, []ListFile{{Path: "/x/a.txt", Data: []byte("b.example\n")}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Meta.Seq != 2 {
		t.Errorf("staged seq %d, want 2", st.Meta.Seq)
	}
	// Staged but not committed: invisible to readers.
	if cur, _ := s.Current(); cur.Seq != first.Seq {
		t.Errorf("current moved to %d before Commit", cur.Seq)
	}
	if gens, _ := s.Generations(); len(gens) != 1 {
		t.Errorf("%d generations visible before Commit", len(gens))
	}
	st.Discard()
	if after := listTree(t, s.Dir); after != before {
		t.Errorf("state changed by a discarded generation:\nbefore %s\nafter  %s", before, after)
	}
}

func TestStaleTempRemovedUnderLock(t *testing.T) {
	t.Parallel()
	s, _ := Open(t.TempDir(), "t")
	if _, err := s.Stage(Meta{}, nil); err != nil { // a process that died before Commit
		t.Fatal(err)
	}
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ents, _ := os.ReadDir(s.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			t.Errorf("stale %s survived Lock", e.Name())
		}
	}
}

func TestLockExcludes(t *testing.T) {
	t.Parallel()
	s, _ := Open(t.TempDir(), "t")
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock = %v, want a deadline error", err)
	}
	unlock()
	unlock2, err := s.Lock(context.Background())
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock2()
}

func TestNoGeneration(t *testing.T) {
	t.Parallel()
	s, _ := Open(filepath.Join(t.TempDir(), "missing"), "t")
	if _, err := s.Current(); !errors.Is(err, ErrNoGeneration) {
		t.Errorf("Current = %v, want ErrNoGeneration", err)
	}
	if _, err := s.Previous(); !errors.Is(err, ErrNoGeneration) {
		t.Errorf("Previous = %v, want ErrNoGeneration", err)
	}
	commit(t, s, Meta{})
	if _, err := s.Previous(); !errors.Is(err, ErrNoGeneration) {
		t.Errorf("Previous with one generation = %v, want ErrNoGeneration", err)
	}
}

func TestMetaRoundTrip(t *testing.T) {
	t.Parallel()
	s, _ := Open(t.TempDir(), "t")
	when := time.Date(2025, 3, 4, 5, 6, 7, 890, time.FixedZone("x", 3600))
	g := commit(t, s, Meta{Settings: testSettings(), Time: when, Netns: "box", RollbackOf: 0, SkipInvalid: true},
		ListFile{Path: "/etc/nftdns/ads.txt", Data: []byte("ads.example\n"), Names: 1},
		ListFile{Path: "/srv/ads.txt", Data: []byte("x.example\ny.example\n"), Names: 2})
	got, err := s.Get(g.Seq)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(when.Truncate(time.Second)) || got.Time.Location() != time.UTC {
		t.Errorf("time %v, want %v in UTC", got.Time, when)
	}
	raw, _ := os.ReadFile(filepath.Join(g.Dir, metaFile))
	if !strings.Contains(string(raw), `"time": "2025-03-04T04:06:07Z"`) {
		t.Errorf("meta.json time not RFC 3339 UTC:\n%s", raw)
	}
	if got.Lists[0].Copy == got.Lists[1].Copy {
		t.Errorf("two lists named ads.txt share the copy %s", got.Lists[0].Copy)
	}
	if got.Netns != "box" || !got.SkipInvalid || got.Lists[1].Names != 2 {
		t.Errorf("meta did not round-trip: %+v", got.Meta)
	}
	if want := Hash(testSettings(), [][]byte{[]byte("ads.example\n"), []byte("x.example\ny.example\n")}); got.Hash != want {
		t.Errorf("hash %s, want %s", got.Hash, want)
	}
}

func TestHash(t *testing.T) {
	t.Parallel()
	base := Hash(testSettings(), [][]byte{[]byte("a\n"), []byte("b\n")})
	other := testSettings()
	other.LogBurst = 5
	for _, tc := range []struct {
		name string
		h    string
		same bool
	}{
		{"identical", Hash(testSettings(), [][]byte{[]byte("a\n"), []byte("b\n")}), true},
		{"settings", Hash(other, [][]byte{[]byte("a\n"), []byte("b\n")}), false},
		{"content", Hash(testSettings(), [][]byte{[]byte("a\n"), []byte("c\n")}), false},
		{"order", Hash(testSettings(), [][]byte{[]byte("b\n"), []byte("a\n")}), false},
		{"split", Hash(testSettings(), [][]byte{[]byte("a\nb\n")}), false},
	} {
		if (tc.h == base) != tc.same {
			t.Errorf("%s: same=%v, want %v", tc.name, tc.h == base, tc.same)
		}
	}
}

func TestCheckTableName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"nftdns", true}, {"my-table_2", true}, {"", false}, {".", false}, {"..", false},
		{".hidden", false}, {"a/b", false}, {strings.Repeat("x", 256), false},
	} {
		if err := CheckTableName(tc.name); (err == nil) != tc.ok {
			t.Errorf("CheckTableName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestSettingsDiff(t *testing.T) {
	t.Parallel()
	a, b := testSettings(), testSettings()
	if d := a.Diff(b); d != nil {
		t.Errorf("equal settings differ in %v", d)
	}
	b.Upstreams = append(b.Upstreams, "198.51.100.2:53")
	b.LogRate = "2/second"
	if d := fmt.Sprint(a.Diff(b)); d != "[upstream log-rate]" {
		t.Errorf("Diff = %s", d)
	}
}

// listTree is a listing of names and sizes under dir, to compare states.
func listTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		size := int64(-1) // directory sizes depend on the file system
		if !d.IsDir() {
			fi, _ := d.Info()
			size = fi.Size()
		}
		fmt.Fprintf(&b, "%s:%d ", strings.TrimPrefix(p, dir), size)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
