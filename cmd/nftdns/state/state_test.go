package state

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

// testList is a list to stage.
type testList struct {
	path, data string
	names      int
}

// stage stages a generation with lists, writing each in two pieces as a
// parser reading through a TeeReader would.
func stage(t *testing.T, s *Store, m Meta, lists ...testList) *Staged {
	t.Helper()
	st, err := s.Stage()
	if err != nil {
		t.Fatalf("Stage: %v", err)
	}
	for _, l := range lists {
		c, err := st.CreateList(l.path, ListOptions{})
		if err != nil {
			t.Fatalf("CreateList: %v", err)
		}
		half := len(l.data) / 2
		for _, piece := range []string{l.data[:half], l.data[half:]} {
			if _, err := io.WriteString(c, piece); err != nil {
				t.Fatalf("write copy: %v", err)
			}
		}
		lf, err := c.Done(l.names)
		if err != nil {
			t.Fatalf("Done: %v", err)
		}
		if lf.SHA256 != sha256.Sum256([]byte(l.data)) || lf.Path != l.path || lf.Names != l.names {
			t.Errorf("Done = %+v for %+v", lf, l)
		}
	}
	if err := st.Finish(m); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	return st
}

func commit(t *testing.T, s *Store, m Meta, lists ...testList) *Generation {
	t.Helper()
	g, err := stage(t, s, m, lists...).Commit()
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
		g := commit(t, s, Meta{Settings: testSettings()}, testList{"/x/a.txt", fmt.Sprintf("n%d.example\n", i), 1})
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
	if b, err := readList(prev, 0); err != nil || b != "n7.example\n" {
		t.Errorf("stored copy = %q, %v", b, err)
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
	first := commit(t, s, Meta{Settings: testSettings()}, testList{"/x/a.txt", "a.example\n", 1})
	before := listTree(t, s.Dir)

	st := stage(t, s, Meta{Settings: testSettings()}, testList{"/x/a.txt", "b.example\n", 1})
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
	st, err := s.Stage() // a process that died before Commit
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateList("/x/a.txt", ListOptions{}); err != nil {
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
		testList{"/etc/nftdns/ads.txt", "ads.example\n", 1},
		testList{"/srv/ads.txt", "x.example\ny.example\n", 2})
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
	for i, want := range []string{"ads.example\n", "x.example\ny.example\n"} {
		if b, err := readList(got, i); err != nil || b != want {
			t.Errorf("copy %d = %q, %v; want %q", i, b, err, want)
		}
		if got.Lists[i].SHA256 != fmt.Sprintf("%x", sha256.Sum256([]byte(want))) {
			t.Errorf("list %d sha256 %s", i, got.Lists[i].SHA256)
		}
	}
	if got.Netns != "box" || !got.SkipInvalid || got.Lists[1].Names != 2 {
		t.Errorf("meta did not round-trip: %+v", got.Meta)
	}
	if want := Hash(testSettings(), sums("ads.example\n", "x.example\ny.example\n")); got.Hash != want {
		t.Errorf("hash %s, want %s", got.Hash, want)
	}
}

func TestHash(t *testing.T) {
	t.Parallel()
	base := Hash(testSettings(), sums("a\n", "b\n"))
	other := testSettings()
	other.LogBurst = 5
	for _, tc := range []struct {
		name string
		h    string
		same bool
	}{
		{"identical", Hash(testSettings(), sums("a\n", "b\n")), true},
		{"settings", Hash(other, sums("a\n", "b\n")), false},
		{"content", Hash(testSettings(), sums("a\n", "c\n")), false},
		{"order", Hash(testSettings(), sums("b\n", "a\n")), false},
		{"split", Hash(testSettings(), sums("a\nb\n")), false},
	} {
		if (tc.h == base) != tc.same {
			t.Errorf("%s: same=%v, want %v", tc.name, tc.h == base, tc.same)
		}
	}
}

// TestHashStable pins Hash to the value the first version of nftdns
// computed (from the lists' bytes), so that generations recorded by it still
// compare equal: a change here makes every re-apply record a new generation.
func TestHashStable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s     Settings
		lists []string
		want  string
	}{
		{testSettings(), []string{"a.example\n", "b.example\nc.example\n"}, "sha256:da27f2af5daea9e351436e8dd9ee68fa1aae998bf3e0ac66c98ab5588b192242"},
		{Settings{}, nil, "sha256:f8f66649b6d69edd2308974e9da81d62a8c4a1b4e631e6fd7983f9c996916c53"},
	} {
		if got := Hash(tc.s, sums(tc.lists...)); got != tc.want {
			t.Errorf("Hash(%+v, %q) = %s, want %s", tc.s, tc.lists, got, tc.want)
		}
	}
}

func TestStagingOrder(t *testing.T) {
	t.Parallel()
	s, _ := Open(t.TempDir(), "t")
	st, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Discard()
	if _, err := st.Commit(); err == nil {
		t.Error("Commit before Finish succeeded")
	}
	c, err := st.CreateList("/x/a.txt", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Finish(Meta{}); err == nil || !strings.Contains(err.Error(), "/x/a.txt") {
		t.Errorf("Finish with a copy not done = %v, want an error naming it", err)
	}
	if _, err := c.Done(0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("late")); err == nil {
		t.Error("Write after Done succeeded")
	}
	if err := st.Finish(Meta{}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateList("/x/b.txt", ListOptions{}); err == nil {
		t.Error("CreateList after Finish succeeded")
	}
}

// TestDiscardClosesCopies: a failed parse discards the generation with a
// copy still open; nothing stays behind.
func TestDiscardClosesCopies(t *testing.T) {
	t.Parallel()
	s, _ := Open(t.TempDir(), "t")
	commit(t, s, Meta{}, testList{"/x/a.txt", "a.example\n", 1})
	before := listTree(t, s.Dir)
	st, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.CreateList("/x/a.txt", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "half a li")
	st.Discard()
	st.Discard()
	if after := listTree(t, s.Dir); after != before {
		t.Errorf("discarded generation left files:\nbefore %s\nafter  %s", before, after)
	}
	if c.f != nil {
		t.Error("Discard left the copy open")
	}
}

// TestLockRemovesWhatItCreated: a command that locks a new state directory
// and records nothing leaves no directory behind; one that records, or
// finds the directory there, leaves it.
func TestLockRemovesWhatItCreated(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "state")
	s, _ := Open(root, "t")
	lockUnlock := func() {
		t.Helper()
		unlock, err := s.Lock(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.Stage()
		if err != nil {
			t.Fatal(err)
		}
		st.Discard()
		unlock()
	}
	lockUnlock()
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("unused state directory left behind: %v", err)
	}

	// Another table's directory keeps the root.
	other, _ := Open(root, "other")
	commit(t, other, Meta{})
	lockUnlock()
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("unused table directory left behind: %v", err)
	}
	if _, err := os.Stat(other.Dir); err != nil {
		t.Errorf("other table's directory: %v", err)
	}

	// Recorded: kept.
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	commit(t, s, Meta{})
	unlock()
	if _, err := s.Current(); err != nil {
		t.Errorf("committed generation gone: %v", err)
	}

	// Existing before: kept, even when empty.
	empty, _ := Open(t.TempDir(), "e")
	if err := os.MkdirAll(empty.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	unlock, err = empty.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	if _, err := os.Stat(empty.Dir); err != nil {
		t.Errorf("pre-existing state directory removed: %v", err)
	}
}

// TestLockExcludesWhileRemoving: processes locking a new state directory at
// once, each removing it again on unlock, still hold the lock one at a time
// (a waiter on a removed lock file must not think it holds the lock).
func TestLockExcludesWhileRemoving(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "state")
	var holders atomic.Int32
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				// Each its own Store, as separate processes would have.
				s, _ := Open(root, "t")
				if w == 3 {
					s, _ = Open(root, "u") // another table in the same root
				}
				unlock, err := s.Lock(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				if w != 3 && holders.Add(1) != 1 {
					t.Error("two holders of the lock at once")
				}
				time.Sleep(100 * time.Microsecond)
				if w != 3 {
					holders.Add(-1)
				}
				unlock()
			}
		}()
	}
	// Whether the directory survives depends on who found it already
	// there (that one leaves it), which is fine: only exclusion matters.
	wg.Wait()
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

// sums is the sha256 of each list.
func sums(lists ...string) [][sha256.Size]byte {
	out := make([][sha256.Size]byte, len(lists))
	for i, l := range lists {
		out[i] = sha256.Sum256([]byte(l))
	}
	return out
}

// readList reads the i-th stored copy of g.
func readList(g *Generation, i int) (string, error) {
	f, err := g.OpenList(i)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
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

// TestSetApplyID: the apply id can be replaced between Finish and Commit,
// and only then; the rest of meta.json stays.
func TestSetApplyID(t *testing.T) {
	t.Parallel()
	s, _ := Open(t.TempDir(), "t")
	unfinished, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	if err := unfinished.SetApplyID("00"); err == nil {
		t.Error("SetApplyID before Finish succeeded")
	}
	unfinished.Discard()
	st := stage(t, s, Meta{Settings: testSettings(), ApplyID: "aaaa"}, testList{"/a.txt", "a.example\n", 1})
	defer st.Discard()
	hash := st.Meta.Hash
	for _, id := range []string{"bbbb", "cccc"} {
		if err := st.SetApplyID(id); err != nil {
			t.Fatal(err)
		}
	}
	g, err := st.Commit()
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(g.Seq)
	if err != nil {
		t.Fatal(err)
	}
	if got.ApplyID != "cccc" || got.Hash != hash || len(got.Lists) != 1 {
		t.Errorf("meta after SetApplyID: %+v", got.Meta)
	}
	if err := st.SetApplyID("dddd"); err == nil {
		t.Error("SetApplyID after Commit succeeded")
	}
}
