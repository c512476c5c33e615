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
// command that takes the lock). Only the Keep newest generations are kept.
package state

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
	return d
}

// ListRecord describes one list of a generation.
type ListRecord struct {
	Path   string `json:"path"`   // where it was read from (absolute)
	Copy   string `json:"copy"`   // the stored copy, relative to the generation directory
	Names  int    `json:"names"`  // names it contributed after parsing
	SHA256 string `json:"sha256"` // of the bytes read
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
}

// ListFile is a list's content as it was read and parsed.
type ListFile struct {
	Path  string // absolute path it was read from
	Data  []byte
	Names int
}

// Hash is the content hash of a generation: sha256 over the canonical JSON
// of the settings and the sha256 of each list's bytes, in order. List paths
// are left out on purpose: moving a file does not change what is applied.
func Hash(s Settings, lists [][]byte) string {
	h := sha256.New()
	js, _ := json.Marshal(s) // a struct of strings cannot fail
	fmt.Fprintf(h, "settings %d\n", len(js))
	h.Write(js)
	for _, l := range lists {
		sum := sha256.Sum256(l)
		fmt.Fprintf(h, "\nlist %x", sum)
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

// ListData reads the stored copy of the i-th list.
func (g *Generation) ListData(i int) ([]byte, error) {
	if i < 0 || i >= len(g.Lists) {
		return nil, fmt.Errorf("generation %d has no list %d", g.Seq, i)
	}
	rel := g.Lists[i].Copy
	if !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("generation %d: list copy path %q leaves the generation directory", g.Seq, rel)
	}
	b, err := os.ReadFile(filepath.Join(g.Dir, rel))
	if err != nil {
		return nil, fmt.Errorf("generation %d: stored copy of %s: %w", g.Seq, g.Lists[i].Path, err)
	}
	return b, nil
}

// Store is the state of one table: ROOT/TABLE.
type Store struct {
	root string
	Dir  string
}

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

// Staged is a generation written to a temporary directory, not yet visible.
type Staged struct {
	s    *Store
	tmp  string
	Meta Meta
}

// Stage writes a new generation (meta and list copies) into a temporary
// directory. m.Seq, m.Hash and m.Lists are filled in here; m.Time is set to
// now when zero. Call Commit once the kernel accepted the ruleset, Discard
// otherwise. The caller should hold the store's lock.
func (s *Store) Stage(m Meta, lists []ListFile) (*Staged, error) {
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
	st := &Staged{s: s, tmp: tmp}
	if err := st.write(m, seq, lists); err != nil {
		st.Discard()
		return nil, err
	}
	return st, nil
}

func (st *Staged) write(m Meta, seq int, lists []ListFile) error {
	if err := os.Mkdir(filepath.Join(st.tmp, listsDir), 0o700); err != nil {
		return err
	}
	m.Seq = seq
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	m.Time = m.Time.UTC().Truncate(time.Second)
	m.Lists = make([]ListRecord, len(lists))
	datas := make([][]byte, len(lists))
	for i, l := range lists {
		// The index keeps copies of same-named lists from different
		// directories apart.
		rel := filepath.Join(listsDir, fmt.Sprintf("%d-%s", i, filepath.Base(l.Path)))
		if err := writeFileSync(filepath.Join(st.tmp, rel), l.Data); err != nil {
			return fmt.Errorf("copy of %s: %w", l.Path, err)
		}
		sum := sha256.Sum256(l.Data)
		m.Lists[i] = ListRecord{Path: l.Path, Copy: rel, Names: l.Names, SHA256: hex.EncodeToString(sum[:])}
		datas[i] = l.Data
	}
	m.Hash = Hash(m.Settings, datas)
	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(st.tmp, metaFile), append(js, '\n')); err != nil {
		return err
	}
	if err := syncDir(filepath.Join(st.tmp, listsDir)); err != nil {
		return err
	}
	st.Meta = m
	return syncDir(st.tmp)
}

// Commit makes the staged generation visible and current, then removes
// generations beyond the Keep newest.
func (st *Staged) Commit() (*Generation, error) {
	if st.tmp == "" {
		return nil, errors.New("staged generation already committed or discarded")
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

// Discard removes the staged generation. Safe to call after Commit.
func (st *Staged) Discard() {
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
