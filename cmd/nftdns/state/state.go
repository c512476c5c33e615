// Package state keeps the generations nftdns applied on disk, so that status,
// dry runs and rollbacks work from a fresh process, also after a reboot.
//
// Layout, for a state directory DIR and a table T:
//
//	DIR/T/lock                      flock(2) held while a command changes T
//	DIR/T/current                   "gen-000007\n": the applied generation
//	DIR/T/gen-000007/meta.json      what was applied (Meta)
//	DIR/T/gen-000007/lists/0-ads.txt  the list bytes exactly as parsed
//
// A generation is written into a temporary directory and renamed into place
// only after the kernel accepted it, so a failed apply changes nothing, and a
// crash leaves at worst a stale temporary directory (removed by the next
// command that takes the lock). The list copies are written while the lists
// are parsed (see ListCopy), so no list is ever held in memory whole. Only
// the Keep newest generations are kept.
package state

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Keep is how many generations a table's state directory keeps.
const Keep = 5

const (
	genPrefix   = "gen-"
	tmpPrefix   = ".tmp-"
	metaFile    = "meta.json"
	currentFile = "current"
	listsDir    = "lists"
)

// ErrNoGeneration is returned when a table has no applied generation.
var ErrNoGeneration = errors.New("no applied generation")

// Settings are the compile settings of a generation, in canonical text form
// (what netip and the rate formatter print), so that equal settings hash
// equally whatever spelling the operator used.
type Settings struct {
	Table     string   `json:"table"`
	Listen    []string `json:"listen"`
	Upstreams []string `json:"upstreams"`
	Clients   []string `json:"clients"`
	Action    string   `json:"action"`
	LogRate   string   `json:"log_rate"`
	LogBurst  uint32   `json:"log_burst"`
	// Options added later are omitted when off, so older generations
	// keep their hash.
	Strict     bool     `json:"strict,omitempty"`
	Intercept  bool     `json:"intercept,omitempty"`
	BlockDoT   bool     `json:"block_dot,omitempty"`
	Interfaces []string `json:"interfaces,omitempty"`
	NflogGroup uint16   `json:"nflog_group,omitempty"`
}

// Diff names the settings fields that differ between s and o, in a fixed
// order; nil when they are equal.
func (s Settings) Diff(o Settings) []string {
	var d []string
	eq := func(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }
	if s.Table != o.Table {
		d = append(d, "table")
	}
	if !eq(s.Listen, o.Listen) {
		d = append(d, "listen")
	}
	if !eq(s.Upstreams, o.Upstreams) {
		d = append(d, "upstream")
	}
	if !eq(s.Clients, o.Clients) {
		d = append(d, "client")
	}
	if s.Action != o.Action {
		d = append(d, "action")
	}
	if s.LogRate != o.LogRate {
		d = append(d, "log-rate")
	}
	if s.LogBurst != o.LogBurst {
		d = append(d, "log-burst")
	}
	if s.Strict != o.Strict {
		d = append(d, "strict")
	}
	if s.Intercept != o.Intercept {
		d = append(d, "intercept")
	}
	if s.BlockDoT != o.BlockDoT {
		d = append(d, "block-dot")
	}
	if !eq(s.Interfaces, o.Interfaces) {
		d = append(d, "interface")
	}
	if s.NflogGroup != o.NflogGroup {
		d = append(d, "nflog-group")
	}
	return d
}

// ListOptions are the per-list options a list was applied with; the zero
// value is a plain blocklist with the global action.
type ListOptions struct {
	Format     string `json:"format,omitempty"`
	Subdomains bool   `json:"subdomains,omitempty"`
	Allow      bool   `json:"allow,omitempty"`
	Action     string `json:"action,omitempty"`
}

// ListRecord describes one list of a generation.
type ListRecord struct {
	Path   string `json:"path"`   // where it was read from (absolute)
	Copy   string `json:"copy"`   // the stored copy, relative to the generation directory
	Names  int    `json:"names"`  // entries it contributed after parsing (rules.List.Count)
	SHA256 string `json:"sha256"` // of the bytes read
	ListOptions
}

// Meta is a generation's meta.json.
type Meta struct {
	Seq         int          `json:"seq"`
	Time        time.Time    `json:"time"` // UTC, whole seconds: marshals as RFC 3339
	Hash        string       `json:"hash"` // "sha256:..." over settings and list contents, see Hash
	Settings    Settings     `json:"settings"`
	SkipInvalid bool         `json:"skip_invalid"` // lists were parsed skipping invalid lines
	Lists       []ListRecord `json:"lists"`
	Netns       string       `json:"netns"`                 // "" = the namespace nftdns ran in
	RollbackOf  int          `json:"rollback_of,omitempty"` // this generation re-applied generation N
	Elements    int          `json:"elements,omitempty"`    // set elements the kernel accepted
	// ApplyID (hex) is the apply id the table's rules carried after this
	// generation was applied: the next apply may update the kernel by set
	// element changes only if its rules still carry it.
	ApplyID string `json:"apply_id,omitempty"`
}

// ListFile describes a list as it was read and parsed; its bytes are not
// kept in memory.
type ListFile struct {
	Path    string            // absolute path it was read from
	SHA256  [sha256.Size]byte // of the bytes parsed
	Names   int               // entries it contributed (rules.List.Count)
	Options ListOptions
}

// Hash is the content hash of a generation: sha256 over the canonical JSON
// of the settings and sums, the sha256 of each list's bytes, in order. List
// paths are left out on purpose: moving a file does not change what is
// applied. The definition is part of the on-disk format (meta.json "hash"):
// changing it would make every recorded generation look different.
func Hash(s Settings, sums [][sha256.Size]byte) string { return HashLists(s, sums, nil) }

// HashLists is Hash with each list's options: a list with non-zero options
// adds them after its sum, so generations of plain lists keep the hash
// Hash gave them.
func HashLists(s Settings, sums [][sha256.Size]byte, opts []ListOptions) string {
	h := sha256.New()
	js, _ := json.Marshal(s) // a struct of strings cannot fail
	fmt.Fprintf(h, "settings %d\n", len(js))
	h.Write(js)
	for i, sum := range sums {
		fmt.Fprintf(h, "\nlist %x", sum)
		if i < len(opts) && opts[i] != (ListOptions{}) {
			oj, _ := json.Marshal(opts[i])
			fmt.Fprintf(h, " options %s", oj)
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// Generation is a committed generation.
type Generation struct {
	Meta
	Dir string // its directory
}

// Name is the generation's directory name, gen-NNNNNN.
func (g *Generation) Name() string { return genName(g.Seq) }

// OpenList opens the stored copy of the i-th list for reading; the caller
// closes it. Errors name the generation and the list.
func (g *Generation) OpenList(i int) (*os.File, error) {
	if i < 0 || i >= len(g.Lists) {
		return nil, fmt.Errorf("generation %d has no list %d", g.Seq, i)
	}
	rel := g.Lists[i].Copy
	if !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("generation %d: list copy path %q leaves the generation directory", g.Seq, rel)
	}
	f, err := os.Open(filepath.Join(g.Dir, rel))
	if err != nil {
		return nil, fmt.Errorf("generation %d: stored copy of %s: %w", g.Seq, g.Lists[i].Path, err)
	}
	return f, nil
}

// Store is the state of one table: ROOT/TABLE.
type Store struct {
	root string
	Dir  string
}

// Table is the store's table name.
func (s *Store) Table() string { return filepath.Base(s.Dir) }

// Open returns the store of table under root. It does no I/O; the
// directories are created by the first Commit.
func Open(root, table string) (*Store, error) {
	if err := CheckTableName(table); err != nil {
		return nil, err
	}
	return &Store{root: root, Dir: filepath.Join(root, table)}, nil
}

// CheckTableName refuses table names that are not a single, ordinary path
// element; the table name becomes a directory name.
func CheckTableName(table string) error {
	switch {
	case table == "":
		return errors.New("table name is empty")
	case len(table) > 255:
		return fmt.Errorf("table name %.20q... is longer than 255 bytes", table)
	case strings.HasPrefix(table, "."), strings.ContainsAny(table, "/\x00"):
		return fmt.Errorf("table name %q must not start with '.' or contain '/'", table)
	}
	return nil
}

func genName(seq int) string { return fmt.Sprintf("%s%06d", genPrefix, seq) }

func parseGenName(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, genPrefix)
	if !ok || len(digits) < 6 {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

// Generations returns the kept generations, oldest first. A missing state
// directory is not an error.
func (s *Store) Generations() ([]*Generation, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var gens []*Generation
	for _, e := range ents {
		seq, ok := parseGenName(e.Name())
		if !ok || !e.IsDir() {
			continue
		}
		g, err := s.load(seq)
		if err != nil {
			return nil, err
		}
		gens = append(gens, g)
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].Seq < gens[j].Seq })
	return gens, nil
}

// Get loads generation seq; fs.ErrNotExist (wrapped) when it is not kept.
func (s *Store) Get(seq int) (*Generation, error) { return s.load(seq) }

func (s *Store) load(seq int) (*Generation, error) {
	dir := filepath.Join(s.Dir, genName(seq))
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return nil, fmt.Errorf("generation %d: %w", seq, err)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("generation %d: %s: %w", seq, filepath.Join(dir, metaFile), err)
	}
	if m.Seq != seq {
		return nil, fmt.Errorf("generation %d: %s says seq %d", seq, filepath.Join(dir, metaFile), m.Seq)
	}
	return &Generation{Meta: m, Dir: dir}, nil
}

// Current returns the applied generation, or ErrNoGeneration.
func (s *Store) Current() (*Generation, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, currentFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoGeneration
	}
	if err != nil {
		return nil, err
	}
	seq, ok := parseGenName(strings.TrimSpace(string(b)))
	if !ok {
		return nil, fmt.Errorf("%s: %q does not name a generation", filepath.Join(s.Dir, currentFile), strings.TrimSpace(string(b)))
	}
	return s.load(seq)
}

// Previous returns the kept generation with the highest seq below the
// current one, or ErrNoGeneration.
func (s *Store) Previous() (*Generation, error) {
	cur, err := s.Current()
	if err != nil {
		return nil, err
	}
	gens, err := s.Generations()
	if err != nil {
		return nil, err
	}
	var prev *Generation
	for _, g := range gens {
		if g.Seq < cur.Seq {
			prev = g
		}
	}
	if prev == nil {
		return nil, ErrNoGeneration
	}
	return prev, nil
}

// nextSeq is one more than the highest seq present or pointed to.
func (s *Store) nextSeq() (int, error) {
	gens, err := s.Generations()
	if err != nil {
		return 0, err
	}
	next := 1
	if n := len(gens); n > 0 {
		next = gens[n-1].Seq + 1
	}
	if cur, err := s.Current(); err == nil && cur.Seq >= next {
		next = cur.Seq + 1
	}
	return next, nil
}

// Staged is a generation being written to a temporary directory, not yet
// visible. Write it in this order: Stage, then for each list CreateList,
// the list's bytes and Done, then Finish; then Commit once the kernel
// accepted the ruleset, or Discard. Discard is always safe and leaves
// nothing behind.
type Staged struct {
	s        *Store
	tmp      string
	copies   []*ListCopy // created, in order
	finished bool        // Finish succeeded
	// Meta is what Finish wrote; before, only Seq is set.
	Meta Meta
}

// Stage starts a new generation in a temporary directory under the store,
// with the next seq. The caller must hold the store's lock (Lock creates the
// state directory; so does Stage).
func (s *Store) Stage() (*Staged, error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	seq, err := s.nextSeq()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.Dir, tmpPrefix+genName(seq)+"-")
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	st := &Staged{s: s, tmp: tmp, Meta: Meta{Seq: seq}}
	if err := os.Mkdir(filepath.Join(tmp, listsDir), 0o700); err != nil {
		st.Discard()
		return nil, fmt.Errorf("state directory: %w", err)
	}
	return st, nil
}

// ListCopy is the stored copy of one list of a staged generation. It is an
// io.Writer meant to sit behind an io.TeeReader between the list file and
// the parser, so that it holds exactly the bytes parsed, even if the file
// changes meanwhile, without the list ever being in memory whole. It hashes
// what it stores.
type ListCopy struct {
	f    *os.File // nil once closed, by Finish or Discard
	h    hash.Hash
	rec  ListRecord
	sum  [sha256.Size]byte // set by Done
	err  error             // first write error, sticky
	done bool
}

// CreateList creates the copy of the generation's next list, read from path
// (absolute; it is recorded, and its base name names the copy).
func (st *Staged) CreateList(path string, opts ListOptions) (*ListCopy, error) {
	if st.tmp == "" || st.finished {
		return nil, errors.New("staged generation already finished, committed or discarded")
	}
	// The index keeps copies of same-named lists from different
	// directories apart.
	rel := filepath.Join(listsDir, fmt.Sprintf("%d-%s", len(st.copies), filepath.Base(path)))
	f, err := os.OpenFile(filepath.Join(st.tmp, rel), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory: copy of %s: %w", path, err)
	}
	c := &ListCopy{f: f, h: sha256.New(), rec: ListRecord{Path: path, Copy: rel, ListOptions: opts}}
	st.copies = append(st.copies, c)
	return c, nil
}

// Write stores p. Its error names the state directory and the list, and is
// also kept for Err: a parser reading through an io.TeeReader sees it as a
// read error.
func (c *ListCopy) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.done || c.f == nil {
		return 0, fmt.Errorf("state directory: copy of %s already done", c.rec.Path)
	}
	n, err := c.f.Write(p)
	c.h.Write(p[:n])
	if err != nil {
		c.err = fmt.Errorf("state directory: copy of %s: %w", c.rec.Path, err)
		return n, c.err
	}
	return n, nil
}

// Err is the first error Write returned, nil if none.
func (c *ListCopy) Err() error { return c.err }

// Done ends the copy and records the list, with the names it contributed,
// in the generation. The ListFile carries the sha256 of the bytes written.
// The copy is synced by Finish: a generation that is discarded (its input
// turned out unchanged) costs no fsync.
func (c *ListCopy) Done(names int) (ListFile, error) {
	if c.done {
		return ListFile{}, fmt.Errorf("state directory: copy of %s already done", c.rec.Path)
	}
	c.done = true
	if c.err != nil {
		return ListFile{}, c.err
	}
	c.h.Sum(c.sum[:0])
	c.rec.Names = names
	c.rec.SHA256 = hex.EncodeToString(c.sum[:])
	return ListFile{Path: c.rec.Path, SHA256: c.sum, Names: names, Options: c.rec.ListOptions}, nil
}

// finish syncs and closes the copy.
func (c *ListCopy) finish() error {
	err := c.f.Sync()
	if cerr := c.f.Close(); err == nil {
		err = cerr
	}
	c.f = nil
	if err != nil {
		return fmt.Errorf("state directory: copy of %s: %w", c.rec.Path, err)
	}
	return nil
}

// abort closes the copy's file if it is open.
func (c *ListCopy) abort() {
	c.done = true
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
}

// Finish writes meta.json once every list is Done. m.Seq, m.Hash and
// m.Lists are filled in here; m.Time is set to now when zero.
func (st *Staged) Finish(m Meta) error {
	if st.tmp == "" || st.finished {
		return errors.New("staged generation already finished, committed or discarded")
	}
	m.Seq = st.Meta.Seq
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	m.Time = m.Time.UTC().Truncate(time.Second)
	m.Lists = make([]ListRecord, len(st.copies))
	sums := make([][sha256.Size]byte, len(st.copies))
	opts := make([]ListOptions, len(st.copies))
	for i, c := range st.copies {
		opts[i] = c.rec.ListOptions
		if !c.done || c.err != nil || c.f == nil {
			return fmt.Errorf("state directory: copy of %s is not complete", c.rec.Path)
		}
		m.Lists[i] = c.rec
		sums[i] = c.sum
	}
	for _, c := range st.copies {
		if err := c.finish(); err != nil {
			return err
		}
	}
	m.Hash = HashLists(m.Settings, sums, opts)
	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(st.tmp, metaFile), append(js, '\n')); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if err := syncDir(filepath.Join(st.tmp, listsDir)); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if err := syncDir(st.tmp); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	st.Meta = m
	st.finished = true
	return nil
}

// SetApplyID records the apply id in a finished, uncommitted generation's
// meta.json (it is known for sure only once the kernel took the ruleset).
func (st *Staged) SetApplyID(id string) error {
	if st.tmp == "" || !st.finished {
		return errors.New("staged generation not finished, or already committed")
	}
	m := st.Meta
	m.ApplyID = id
	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(st.tmp, metaFile)
	os.Remove(path + ".new") // left by an earlier failed attempt, if any
	if err := writeFileSync(path+".new", append(js, '\n')); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	st.Meta = m
	return nil
}

// Commit makes the staged generation visible and current, then removes
// generations beyond the Keep newest.
func (st *Staged) Commit() (*Generation, error) {
	if st.tmp == "" {
		return nil, errors.New("staged generation already committed or discarded")
	}
	if !st.finished {
		return nil, errors.New("staged generation not finished")
	}
	dir := filepath.Join(st.s.Dir, genName(st.Meta.Seq))
	if err := os.Rename(st.tmp, dir); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	st.tmp = ""
	if err := syncDir(st.s.Dir); err != nil {
		return nil, err
	}
	if err := st.s.setCurrent(st.Meta.Seq); err != nil {
		return nil, err
	}
	g := &Generation{Meta: st.Meta, Dir: dir}
	return g, st.s.prune()
}

// Discard removes the staged generation, closing copies not Done. Safe to
// call more than once, and after Commit.
func (st *Staged) Discard() {
	for _, c := range st.copies {
		c.abort()
	}
	if st.tmp != "" {
		os.RemoveAll(st.tmp)
		st.tmp = ""
	}
}

// setCurrent replaces the current pointer atomically (write + rename).
func (s *Store) setCurrent(seq int) error {
	f, err := os.CreateTemp(s.Dir, tmpPrefix+currentFile+"-")
	if err != nil {
		return err
	}
	_, werr := f.WriteString(genName(seq) + "\n")
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(f.Name(), filepath.Join(s.Dir, currentFile))
	}
	if werr != nil {
		os.Remove(f.Name())
		return fmt.Errorf("state directory: %w", werr)
	}
	return syncDir(s.Dir)
}

// prune removes generations beyond the Keep newest (never the current one)
// and leftovers of interrupted runs.
func (s *Store) prune() error {
	gens, err := s.Generations()
	if err != nil {
		return err
	}
	cur, _ := s.Current()
	for i := 0; i < len(gens)-Keep; i++ {
		if cur != nil && gens[i].Seq == cur.Seq {
			continue
		}
		if err := os.RemoveAll(gens[i].Dir); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
	}
	return s.removeStale()
}

// removeStale deletes temporary files and directories left by a process
// that died between Stage and Commit. Only call it under the lock.
func (s *Store) removeStale() error {
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := os.RemoveAll(filepath.Join(s.Dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
