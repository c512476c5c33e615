package cli

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"nftdns/rules"
)

// TestApplyStreamsLists: applying a list needs memory for its distinct names,
// not for its bytes. The list has 2,000,000 lines (34 MB) but only 1000
// distinct names; the heap is measured when the fake kernel receives the
// ruleset, after parsing, while the parsed lists and the compiled ruleset
// are still referenced.
//
// The bound, a third of the file size (11 MB), is generous on purpose: what
// is live at that point is the 1000 names, the compiled ruleset and the CLI's
// own small state, well under 1 MB, plus whatever the runtime and the test
// binary keep; holding the file's bytes (or a copy of them) anywhere would
// add at least 34 MB and fail by a factor of three. The heap is compared
// with a measurement taken before the run, after a GC, and the test is not
// parallel, so other tests' garbage does not count.
func TestApplyStreamsLists(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and parses a 34 MB list")
	}
	h := newHarness(t)
	const lines, distinct = 2_000_000, 1000
	path := filepath.Join(h.dir, "big.txt")
	size, sum := writeBigList(t, path, lines, distinct)

	var before, at runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	h.k.onApply = func(*rules.Ruleset) {
		runtime.GC()
		runtime.ReadMemStats(&at)
	}
	code, _, stderr := h.apply("--blocklist", path)
	if code != 0 {
		t.Fatalf("apply: exit %d: %s", code, stderr)
	}
	if at.NumGC == 0 {
		t.Fatal("the fake kernel's Apply was not called")
	}
	grew := int64(at.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("list %d bytes, %d lines; heap before %d, after parsing %d (+%d, %.1f%% of the file)",
		size, lines, before.HeapAlloc, at.HeapAlloc, grew, 100*float64(grew)/float64(size))
	if grew > size/3 {
		t.Errorf("heap grew by %d bytes while applying a %d-byte list with %d names: the list is held in memory", grew, size, distinct)
	}

	// The copy recorded is the file, byte for byte.
	g := h.current()
	if rec := g.Lists[0]; rec.Names != distinct || rec.SHA256 != hex.EncodeToString(sum) {
		t.Errorf("recorded %+v, want %d names and sha256 %x", rec, distinct, sum)
	}
	if fi, err := os.Stat(filepath.Join(g.Dir, g.Lists[0].Copy)); err != nil || fi.Size() != size {
		t.Errorf("stored copy: %v, want %d bytes", err, size)
	}
}

// writeBigList writes lines names, cycling through distinct ones, and
// returns the file's size and sha256.
func writeBigList(t *testing.T, path string, lines, distinct int) (int64, []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hs := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, hs), 1<<20)
	var size int64
	line := make([]byte, 0, 64)
	for i := range lines {
		line = append(strconv.AppendInt(append(line[:0], "host-"...), int64(i%distinct), 10), ".example\n"...)
		n, err := bw.Write(line)
		if err != nil {
			t.Fatal(err)
		}
		size += int64(n)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return size, hs.Sum(nil)
}

// TestApplyReadsListsOnce: the copy recorded is the bytes parsed, read once
// from the list; a pipe, which cannot be read twice, stands for a file that
// changes after it was read.
func TestApplyReadsListsOnce(t *testing.T) {
	h := newHarness(t)
	fifo := filepath.Join(h.dir, "pipe.txt")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	const content = "# from a pipe\nads.example\n0.0.0.0 tracker.example\n"
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			done <- err
			return
		}
		_, err = io.WriteString(f, content)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	code, _, stderr := h.apply("--blocklist", fifo)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("apply: exit %d: %s", code, stderr)
	}
	g := h.current()
	stored, err := os.ReadFile(filepath.Join(g.Dir, g.Lists[0].Copy))
	if err != nil || string(stored) != content {
		t.Errorf("stored copy %q, %v; want %q", stored, err, content)
	}
	if sum := sha256.Sum256([]byte(content)); g.Lists[0].SHA256 != hex.EncodeToString(sum[:]) || g.Lists[0].Names != 2 {
		t.Errorf("recorded %+v", g.Lists[0])
	}
	if got, want := h.k.tables["nftdns"].Render(), wantRender(t, []string{fifo}, []string{content}); got != want {
		t.Errorf("kernel holds a different ruleset than the pipe's content")
	}
}

// TestFailedApplyLeavesNoCopies: the copies written while parsing go when
// the apply fails, whatever fails; dry runs write none.
func TestFailedApplyLeavesNoCopies(t *testing.T) {
	h := newHarness(t)
	good := h.write("good.txt", "a.example\n")
	if code, _, stderr := h.apply("--blocklist", good); code != 0 {
		t.Fatal(stderr)
	}
	before := tree(t, h.stateDir)
	bad := h.write("bad.txt", "b.example\nnot a name\n")
	for _, tc := range []struct {
		name  string
		code  int
		setup func()
		args  []string
	}{
		{name: "bad line in the second list", code: 2, args: []string{"--blocklist", h.write("c.txt", "c.example\n"), "--blocklist", bad}},
		{name: "missing second list", code: 2, args: []string{"--blocklist", good, "--blocklist", filepath.Join(h.dir, "gone.txt")}},
		{name: "kernel refuses", code: 1, setup: func() { h.k.applyErr = errors.New("netlink: invalid argument") },
			args: []string{"--blocklist", h.write("d.txt", "d.example\n")}},
		{name: "dry run", code: 0, args: []string{"--blocklist", h.write("e.txt", "e.example\n"), "--dry-run"}},
		{name: "unchanged", code: 0, args: []string{"--blocklist", good}},
	} {
		if tc.setup != nil {
			tc.setup()
		}
		code, _, stderr := h.apply(tc.args...)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d: %s", tc.name, code, tc.code, stderr)
		}
		if after := tree(t, h.stateDir); after != before {
			t.Errorf("%s: state directory changed:\nbefore %s\nafter  %s", tc.name, before, after)
		}
	}
}

// TestCopyWriteFailure: a failure to write a list's copy is the state
// directory's (exit 1), not the list's, and changes nothing. RLIMIT_FSIZE
// makes the write fail (EFBIG, with SIGXFSZ ignored) once the copy grows
// past 1 MiB; the list was written before.
func TestCopyWriteFailure(t *testing.T) {
	h := newHarness(t)
	if code, _, stderr := h.apply("--blocklist", h.write("a.txt", "a.example\n")); code != 0 {
		t.Fatal(stderr)
	}
	before := tree(t, h.stateDir)
	big := filepath.Join(h.dir, "big.txt")
	writeBigList(t, big, 200_000, 1000) // 3.4 MB

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	signal.Ignore(syscall.SIGXFSZ)
	defer signal.Reset(syscall.SIGXFSZ)
	lim := old
	lim.Cur = 1 << 20
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	code, _, stderr := h.apply("--blocklist", big)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatalf("restoring RLIMIT_FSIZE: %v", err)
	}
	if code != 1 || !strings.Contains(stderr, "state directory: copy of "+big) || !strings.Contains(stderr, "file too large") {
		t.Errorf("exit %d, %q; want 1 and the copy's error", code, stderr)
	}
	oneErrorLine(t, stderr)
	if h.k.applies != 1 {
		t.Errorf("the kernel was called after the copy failed")
	}
	if after := tree(t, h.stateDir); after != before {
		t.Errorf("state directory changed:\nbefore %s\nafter  %s", before, after)
	}
}
