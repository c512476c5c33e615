package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	ucli "github.com/urfave/cli/v2"

	"nftdns/cmd/nftdns/state"
	"nftdns/rules"
)

func applyCommand(e *env) *ucli.Command {
	return &ucli.Command{
		Name:  "apply",
		Usage: "compile the blocklists and replace the table atomically",
		Description: "Loads the blocklists, compiles them with the settings and replaces the table\n" +
			"inet TABLE in one kernel transaction. On success the generation (settings, list\n" +
			"copies, hash) is recorded in STATE-DIR/TABLE; the 5 newest are kept. Applying\n" +
			"exactly what the current generation holds re-applies it without recording a new\n" +
			"one. With --dry-run, nothing is applied or recorded: the output says which names\n" +
			"each list adds (+N) and removes (-M) versus the current generation, and whether\n" +
			"the settings changed.",
		Flags: append(applyFlags(), &ucli.BoolFlag{Name: flagFull,
			Usage: "replace every set's elements even if only list contents changed (default: send only the changed elements)"}),
		Action: func(c *ucli.Context) error { return runApply(c, e) },
	}
}

// renderFormats are the outputs of render: the nft table nftdns applies,
// and the classic iptables-restore rulesets of the same lists (the
// reference design of the benchmark, and a way to run on old kernels).
var renderFormats = []string{"nft", "iptables", "ip6tables"}

func renderCommand(e *env) *ucli.Command {
	return &ucli.Command{
		Name:  "render",
		Usage: "print the compiled ruleset; touches nothing",
		Description: "Takes apply's flags (and --config) and prints the table apply would install,\n" +
			"in nft syntax. --format iptables (or ip6tables) prints instead the classic\n" +
			"iptables-restore ruleset for the same lists: u32 dispatch on the first two\n" +
			"letters, one string match per name, nth-statistic round robin with CONNMARK.",
		Flags: append(applyFlags(), &ucli.StringFlag{Name: "format", Value: "nft", Usage: "nft, iptables or ip6tables"}),
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			format := c.String("format")
			if !slices.Contains(renderFormats, format) {
				return usageErrorf("nftdns render", "--format %q: want one of %s", format, strings.Join(renderFormats, ", "))
			}
			o, err := applyOptions(c)
			if err != nil {
				return err
			}
			in, err := compileOptions(o, e, nil)
			if err != nil {
				return err
			}
			var out string
			switch format {
			case "nft":
				out = in.rs.Render()
			default:
				s, _, err := o.settings()
				if err != nil {
					return err
				}
				render := rules.RenderIptables
				if format == "ip6tables" {
					render = rules.RenderIp6tables
				}
				if out, err = render(s, in.lists); err != nil {
					return err
				}
			}
			if !strings.HasSuffix(out, "\n") {
				out += "\n"
			}
			_, err = io.WriteString(e.stdout, out)
			return err
		},
	}
}

func checkCommand(e *env) *ucli.Command {
	return &ucli.Command{
		Name:      "check",
		Usage:     "say whether names are blocked, and by which list entry",
		ArgsUsage: "NAME...",
		Description: "Takes apply's flags (only the blocklists and --skip-invalid matter) and prints,\n" +
			"for each NAME, 'NAME: blocked by FILE:LINE (ENTRY)', 'NAME: allowed by\n" +
			"FILE:LINE (ENTRY)' or 'NAME: not listed'. Flags go\n" +
			"before the names. An invalid NAME is reported on its line and makes the exit\n" +
			"status 2.",
		Flags:  applyFlags(),
		Action: func(c *ucli.Context) error { return runCheck(c, e) },
	}
}

// compiled is everything a command derives from the inputs.
type compiled struct {
	opts     *options
	settings state.Settings
	lists    []*rules.List
	files    []state.ListFile
	rs       *rules.Ruleset
	// URL lists whose fetch failed: their last good copy was used.
	fetchFailures []fetchFailure
}

// applyOptions resolves the options of apply and render and checks that
// the required ones are there.
func applyOptions(c *ucli.Context) (*options, error) {
	o, err := resolveOptions(c)
	if err != nil {
		return nil, err
	}
	if err := o.require("nftdns "+c.Command.Name, flagListen, flagUpstream, flagClient, flagBlocklist); err != nil {
		return nil, err
	}
	return o, nil
}

// compileOptions builds the ruleset from resolved options, parsing the
// lists in o.blocklist. With st, the lists are copied into the staged
// generation as they are parsed (see loadLists).
func compileOptions(o *options, e *env, st *state.Staged) (*compiled, error) {
	s, cs, err := o.settings()
	if err != nil {
		return nil, err
	}
	srcs, fails, err := openSources(context.Background(), o)
	if err != nil {
		return nil, err
	}
	defer closeSources(srcs)
	for _, f := range fails {
		fmt.Fprintf(e.stderr, "nftdns: fetching %s failed, using the last good copy: %v\n", f.url, f.err)
	}
	lists, files, err := loadLists(srcs, o.skipInvalid, e.stderr, st)
	if err != nil {
		return nil, err
	}
	rs, err := rules.Compile(s, lists)
	if err != nil {
		return nil, err
	}
	return &compiled{opts: o, settings: cs, lists: lists, files: files, rs: rs, fetchFailures: fails}, nil
}

// listSource is a list to parse: the file at path, or, during rollback, a
// stored copy already opened, recorded under the path it was read from.
type listSource struct {
	path   string
	stored *os.File
	spec   rules.ListSpec
}

// sourcesOf lists o's blocklists and allowlists as sources.
func sourcesOf(o *options) []listSource {
	var srcs []listSource
	for _, spec := range o.lists() {
		srcs = append(srcs, listSource{path: spec.Path, spec: spec})
	}
	return srcs
}

// recordOptions and specOptions convert per-list options to and from
// their recorded form.
func recordOptions(s rules.ListSpec) state.ListOptions {
	return state.ListOptions{Format: s.Format, Subdomains: s.Subdomains, Allow: s.Allow, Action: s.Action}
}

func specOptions(path string, o state.ListOptions) rules.ListSpec {
	return rules.ListSpec{Path: path, Format: o.Format, Subdomains: o.Subdomains, Allow: o.Allow, Action: o.Action}
}

// loadLists parses each list as it streams from its file: memory grows with
// the distinct names, not with the size of the lists. Each list's bytes pass
// on their way to the parser through a sha256 and, when st is not nil, into
// the list's copy in the staged generation, so that the copy recorded is
// exactly what was parsed even if the file changes meanwhile, and the file
// is read once (it may be a pipe).
//
// A path may be a glob (rules.ExpandPath) and a file gzip data; the copy
// keeps the bytes as read (compressed), which ParseList decompresses the
// same way on rollback.
//
// A list that cannot be opened or read is bad input naming the file, as in
// rules.LoadLists (a stored copy that cannot be read is not: the system
// failed); a failure to write the copy is the state directory's.
func loadLists(srcs []listSource, skipInvalid bool, stderr io.Writer, st *state.Staged) ([]*rules.List, []state.ListFile, error) {
	lists := make([]*rules.List, 0, len(srcs))
	files := make([]state.ListFile, 0, len(srcs))
	for _, spec := range srcs {
		// A glob stands for the files it matches, each a list of its own
		// (recorded under its own name, so rollback needs no glob).
		expanded := []listSource{spec}
		if spec.stored == nil {
			paths, err := rules.ExpandPath(spec.path)
			if err != nil {
				return nil, nil, err
			}
			expanded = expanded[:0]
			for _, p := range paths {
				expanded = append(expanded, listSource{path: p, spec: spec.spec})
			}
		}
		for _, src := range expanded {
			opt := rules.ParseOptions{SkipInvalid: skipInvalid, Format: src.spec.Format, Subdomains: src.spec.Subdomains, Allow: src.spec.Allow}
			l, f, err := loadList(src, opt, st)
			if err != nil {
				return nil, nil, err
			}
			if l.Skipped > 0 {
				fmt.Fprintf(stderr, "nftdns: skipped %d invalid lines in %s\n", l.Skipped, src.path)
			}
			if l.Unsupported > 0 {
				fmt.Fprintf(stderr, "nftdns: skipped %d entries nftdns cannot express in %s\n", l.Unsupported, src.path)
			}
			lists = append(lists, l)
			files = append(files, f)
		}
	}
	return lists, files, nil
}

func loadList(src listSource, opt rules.ParseOptions, st *state.Staged) (*rules.List, state.ListFile, error) {
	abs, err := filepath.Abs(src.path)
	if err != nil || isURL(src.path) {
		abs = src.path
	}
	f := src.stored
	if f == nil {
		if f, err = os.Open(src.path); err != nil {
			return nil, state.ListFile{}, inputErrorf("blocklist: %v", err)
		}
		defer f.Close()
	}
	h := sha256.New()
	sink := io.Writer(h)
	var cp *state.ListCopy
	if st != nil {
		if cp, err = st.CreateList(abs, recordOptions(src.spec)); err != nil {
			return nil, state.ListFile{}, err
		}
		sink = cp // hashes what it stores
	}
	r := &readRecorder{r: f}
	l, err := rules.ParseList(io.TeeReader(r, sink), src.path, opt)
	// ParseList reports any failure to read as "read PATH: ...": tell
	// the source's failures from the copy's.
	switch {
	case cp != nil && cp.Err() != nil:
		return nil, state.ListFile{}, cp.Err()
	case r.err != nil && src.stored != nil:
		return nil, state.ListFile{}, fmt.Errorf("stored copy of %s: %w", src.path, r.err)
	case r.err != nil:
		return nil, state.ListFile{}, inputErrorf("blocklist: %v", r.err)
	case err != nil:
		return nil, state.ListFile{}, err
	}
	l.Action, l.Allow = src.spec.Action, src.spec.Allow
	if cp != nil {
		lf, err := cp.Done(l.Count())
		return l, lf, err
	}
	lf := state.ListFile{Path: abs, Names: l.Count(), Options: recordOptions(src.spec)}
	h.Sum(lf.SHA256[:0])
	return l, lf, nil
}

// readRecorder passes reads through and keeps the first error other than
// io.EOF.
type readRecorder struct {
	r   io.Reader
	err error
}

func (r *readRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// hashOf is the content hash of what in would record.
func hashOf(in *compiled) string {
	sums := make([][sha256.Size]byte, len(in.files))
	opts := make([]state.ListOptions, len(in.files))
	for i, f := range in.files {
		sums[i] = f.SHA256
		opts[i] = f.Options
	}
	return state.HashLists(in.settings, sums, opts)
}

func runApply(c *ucli.Context, e *env) error {
	if err := noArgs(c); err != nil {
		return err
	}
	o, err := applyOptions(c)
	if err != nil {
		return err
	}
	// Bad settings are reported before anything is read, locked or created.
	_, cs, err := o.settings()
	if err != nil {
		return err
	}
	store, err := openStore(o.stateDir, cs.Table)
	if err != nil {
		return err
	}
	if o.dryRun {
		in, err := compileOptions(o, e, nil)
		if err != nil {
			return err
		}
		return dryRun(e.stdout, store, in)
	}
	// The lists are parsed under the lock, straight into a staged
	// generation. Whatever fails from here on (a bad line, the kernel)
	// discards it, and unlock removes the state directory again if this
	// run created it: the state directory is left as it was.
	unlock, err := store.Lock(c.Context)
	if err != nil {
		return err
	}
	defer unlock()
	staged, err := store.Stage()
	if err != nil {
		return err
	}
	defer staged.Discard()
	// The current generation's ruleset, the base of an incremental apply,
	// compiles on another core while the new lists are parsed.
	var base <-chan baseResult
	if !o.full {
		base = startBase(store, o.netns, cs.Table)
	}
	in, err := compileOptions(o, e, staged)
	if err != nil {
		return err
	}
	_, err = commitApplyVia(c.Context, e, store, staged, in, in.opts.netns, 0, &applyVia{baseAsync: base})
	return err
}

// commitApply applies in.rs and records it in staged, which holds the
// copies of in's lists: the generation is finished first, so a failure to
// write the state directory leaves the kernel untouched, and committed only
// after the kernel accepted the ruleset, so a failed apply leaves the state
// directory as it was. rollbackOf is the generation being re-applied by
// rollback, 0 for apply. The caller holds the store's lock and discards
// staged when it is not committed (unchanged input, errors).
func commitApply(ctx context.Context, e *env, store *state.Store, staged *state.Staged, in *compiled, netns string, rollbackOf int) (*state.Generation, error) {
	return commitApplyVia(ctx, e, store, staged, in, netns, rollbackOf, nil)
}

// applyVia lets the daemon steer commitApplyVia (see run.go); nil is
// plain apply.
type applyVia struct {
	base   *rules.Ruleset // what the kernel holds, if known; else rebuilt from the state
	baseID []byte
	// baseAsync, if set, delivers the base rebuilt from the state (see
	// startBase).
	baseAsync <-chan baseResult
	// rebuilt, if set, adjusts a base rebuilt from the state directory.
	rebuilt func(*rules.Ruleset) *rules.Ruleset
	// send, if set, turns the compiled ruleset into the one sent.
	send  func(*rules.Ruleset) *rules.Ruleset
	quiet bool // no summary line on stdout

	// Out: what the kernel got, and how.
	sent  *rules.Ruleset
	stats *applyStats
}

// commitApplyVia is commitApply, steered by via when not nil.
func commitApplyVia(ctx context.Context, e *env, store *state.Store, staged *state.Staged, in *compiled, netns string, rollbackOf int, via *applyVia) (*state.Generation, error) {
	var unchanged *state.Generation
	if cur, err := store.Current(); err == nil && rollbackOf == 0 &&
		cur.Hash == hashOf(in) && cur.Netns == netns {
		// Re-applying the current generation (after a reboot or a flush)
		// must not push older generations out of the rollback window.
		unchanged = cur
	}

	base, baseID := chooseBase(e, store, in, netns, unchanged, via)
	applyID, err := newApplyID()
	if err != nil {
		return nil, err
	}
	if unchanged != nil {
		// A re-apply of the current generation marks its rules with the
		// id it recorded, which then stays true.
		if id, err := hexID(unchanged.ApplyID); err == nil {
			applyID = id
		}
	}

	if unchanged == nil {
		err := staged.Finish(state.Meta{
			Time:        e.now(),
			Settings:    in.settings,
			SkipInvalid: in.opts.skipInvalid,
			Netns:       netns,
			RollbackOf:  rollbackOf,
			Elements:    in.rs.ElementCount(),
			ApplyID:     hex.EncodeToString(applyID),
		})
		if err != nil {
			return nil, err
		}
	}

	k, err := e.open(netns)
	if err != nil {
		return nil, fmt.Errorf("open netlink%s: %w", nsSuffix(netns), err)
	}
	defer k.Close()
	if len(in.rs.Aux) > 0 {
		// In-kernel answers go out of these interfaces only: a name that
		// does not exist would silently answer nothing.
		for _, ifn := range in.settings.Interfaces {
			ok, err := k.LinkExists(ctx, ifn)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, inputErrorf("--interface %q: no such interface%s (needed by the nxdomain/refused action to send answers)", ifn, nsSuffix(netns))
			}
		}
	}
	send := in.rs
	if via != nil && via.send != nil {
		send = via.send(in.rs)
	}
	stats, err := k.ApplyOver(ctx, send, base, baseID, applyID)
	if err == nil && stats == nil {
		stats = &applyStats{}
	}
	if err == nil && in.opts.full {
		stats.Fallback = "--full" // the kernel layer only knows it had no base
	}
	if err != nil {
		return nil, withContext(fmt.Sprintf("apply table inet %s%s", in.rs.Table, nsSuffix(netns)), err,
			fmt.Sprintf("apply table %q: ", in.rs.Table))
	}

	g := unchanged
	if g == nil {
		if id := hex.EncodeToString(stats.ApplyID); len(stats.ApplyID) > 0 && id != staged.Meta.ApplyID {
			// An incremental apply kept the rules, and their id.
			err = staged.SetApplyID(id)
		}
		if err == nil {
			g, err = staged.Commit()
		}
		if err != nil {
			// The kernel has the new ruleset; only the record failed.
			return nil, fmt.Errorf("table inet %s was applied, but recording it in %s failed: %w", in.rs.Table, store.Dir, err)
		}
	}

	if via != nil {
		via.sent, via.stats = send, stats
		if via.quiet {
			return g, nil
		}
	}
	names := 0
	for _, f := range in.files {
		names += f.Names
	}
	table := fmt.Sprintf("table inet %s%s", in.rs.Table, nsSuffix(netns))
	var head string
	switch {
	case rollbackOf != 0:
		head = fmt.Sprintf("rolled back %s to generation %d (recorded as generation %d)", table, rollbackOf, g.Seq)
	case unchanged != nil:
		head = fmt.Sprintf("applied generation %d again (unchanged) to %s", g.Seq, table)
	default:
		head = fmt.Sprintf("applied generation %d to %s", g.Seq, table)
	}
	fmt.Fprintf(e.stdout, "%s: %d names from %d lists, %d elements, %s, ruleset generation %d, %s\n",
		head, names, len(in.files), stats.Elements, stats.Duration.Round(time.Millisecond), stats.Generation, applyHow(stats))
	if line := entriesSummary(in.rs.Stats); line != "" {
		fmt.Fprintln(e.stdout, line)
	}
	return g, nil
}

// entriesSummary says what the compiler made of suffix entries and
// exceptions, and what it folded away; "" when the lists had none.
func entriesSummary(st rules.Stats) string {
	r := st.Resolve
	folded := r.ExactAllowed + r.ExactRedundant + r.BlockAllowed + r.BlockRedundant + r.AllowRedundant + r.AllowUnused
	if st.Suffixes+st.Exceptions+folded == 0 {
		return ""
	}
	line := fmt.Sprintf("  %d suffix entries, %d exceptions; folded away: %d redundant (covered by a broader entry with the same action), %d allowed, %d unused exceptions",
		st.Suffixes, st.Exceptions, r.ExactRedundant+r.BlockRedundant+r.AllowRedundant, r.ExactAllowed+r.BlockAllowed, r.AllowUnused)
	if st.SuffixResidual > 0 {
		line += fmt.Sprintf("; %d suffix entries with a documented over-match (README: limits of suffix entries)", st.SuffixResidual)
	}
	return line
}

// contextError prefixes an error with what the CLI was doing, dropping the
// same context if the error already starts with it (the nft package names
// the table itself), so the line reads once.
type contextError struct {
	msg string
	err error
}

func (e *contextError) Error() string { return e.msg }
func (e *contextError) Unwrap() error { return e.err }

func withContext(prefix string, err error, dup string) error {
	return &contextError{msg: prefix + ": " + strings.TrimPrefix(err.Error(), dup), err: err}
}

func nsSuffix(netns string) string {
	if netns == "" {
		return ""
	}
	return fmt.Sprintf(" in netns %s", netns)
}

// dryRun prints what applying in would change versus the current
// generation. Format:
//
//	dry run: nothing applied
//	compared with generation 3 (applied 2025-01-02T03:04:05Z, sha256:...)
//	list /abs/a.txt: 1200 names, +12 -3
//	list /abs/new.txt: 50 names, +50 -0 (new list)
//	list /abs/old.txt: 0 names, +0 -20 (list removed)
//	settings: unchanged            (or: settings: changed: upstream, log-rate)
//	would apply: 1250 names from 2 lists, 1300 elements, sha256:...
func dryRun(w io.Writer, store *state.Store, in *compiled) error {
	hash := hashOf(in)
	fmt.Fprintln(w, "dry run: nothing applied")

	cur, err := store.Current()
	switch {
	case errors.Is(err, state.ErrNoGeneration):
		fmt.Fprintf(w, "no generation applied yet (state in %s)\n", store.Dir)
	case err != nil:
		return err
	default:
		fmt.Fprintf(w, "compared with generation %d (applied %s, %s)\n", cur.Seq, cur.Time.Format(time.RFC3339), cur.Hash)
	}

	old := map[string]map[string]int{} // list path -> names
	var oldOrder []string
	if cur != nil {
		for i, rec := range cur.Lists {
			l, err := parseStored(cur, i)
			if err != nil {
				return err
			}
			if old[rec.Path] == nil {
				oldOrder = append(oldOrder, rec.Path)
				old[rec.Path] = map[string]int{}
			}
			addEntries(old[rec.Path], l)
		}
	}

	// A list given twice counts once, under its first position.
	var order []string
	current := map[string]map[string]int{}
	for i, f := range in.files {
		if current[f.Path] == nil {
			order = append(order, f.Path)
			current[f.Path] = map[string]int{}
		}
		addEntries(current[f.Path], in.lists[i])
	}
	names := 0
	for _, p := range order {
		added, removed := diffNames(old[p], current[p])
		note := ""
		if cur != nil && old[p] == nil {
			note = " (new list)"
		}
		names += len(current[p])
		fmt.Fprintf(w, "list %s: %d names, +%d -%d%s\n", p, len(current[p]), added, removed, note)
	}
	for _, p := range oldOrder {
		if current[p] == nil {
			fmt.Fprintf(w, "list %s: 0 names, +0 -%d (list removed)\n", p, len(old[p]))
		}
	}

	switch {
	case cur == nil:
		fmt.Fprintln(w, "settings: new")
	case len(cur.Settings.Diff(in.settings)) == 0:
		fmt.Fprintln(w, "settings: unchanged")
	default:
		fmt.Fprintf(w, "settings: changed: %s\n", strings.Join(cur.Settings.Diff(in.settings), ", "))
	}
	if cur != nil && cur.Hash == hash {
		fmt.Fprintf(w, "no changes: identical to generation %d\n", cur.Seq)
	}
	if cur != nil {
		fmt.Fprintln(w, dryRunHow(cur, in))
	}
	fmt.Fprintf(w, "would apply: %d names from %d lists, %d elements, %s\n", names, len(order), in.rs.ElementCount(), hash)
	return nil
}

// parseStored parses the stored copy of g's i-th list, streaming, and
// leniently: the copy was accepted when it was applied.
func parseStored(g *state.Generation, i int) (*rules.List, error) {
	f, err := g.OpenList(i)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	o := g.Lists[i].ListOptions
	l, err := rules.ParseList(f, g.Lists[i].Path, rules.ParseOptions{SkipInvalid: true, Format: o.Format, Subdomains: o.Subdomains, Allow: o.Allow})
	if err != nil {
		return nil, fmt.Errorf("generation %d: %w", g.Seq, err)
	}
	return l, nil
}

// addEntries adds the keys of l's entries to m: an exact block name as it
// is, other entries as Entry.Key spells them.
func addEntries(m map[string]int, l *rules.List) {
	for n := range l.Names {
		m[n] = 1
	}
	for _, e := range l.Entries {
		m[e.Key()] = 1
	}
}

// diffNames counts names in b not in a (added) and in a not in b (removed).
func diffNames(a, b map[string]int) (added, removed int) {
	for n := range b {
		if _, ok := a[n]; !ok {
			added++
		}
	}
	for n := range a {
		if _, ok := b[n]; !ok {
			removed++
		}
	}
	return added, removed
}

// isFlagOf reports whether arg looks like a flag: --anything, or -name
// for one of the command's flags.
func isFlagOf(cmd *ucli.Command, arg string) bool {
	if !strings.HasPrefix(arg, "-") {
		return false
	}
	if strings.HasPrefix(arg, "--") {
		return true
	}
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	for _, f := range cmd.Flags {
		if slices.Contains(f.Names(), name) {
			return true
		}
	}
	return name == "h" || name == "help"
}

func runCheck(c *ucli.Context, e *env) error {
	cmd := "nftdns check"
	names := c.Args().Slice()
	if len(names) == 0 {
		return usageErrorf(cmd, "give at least one NAME to check")
	}
	// A list may hold names that start with '-', so only "--anything" or
	// something that spells one of check's own flags is taken for a
	// misplaced flag.
	for _, n := range names {
		if isFlagOf(c.Command, n) {
			return usageErrorf(cmd, "%q after a NAME: flags go before the names", n)
		}
	}
	o, err := resolveOptions(c)
	if err != nil {
		return err
	}
	if err := o.require(cmd, flagBlocklist); err != nil {
		return err
	}
	srcs, fails, err := openSources(c.Context, o)
	if err != nil {
		return err
	}
	defer closeSources(srcs)
	for _, f := range fails {
		fmt.Fprintf(e.stderr, "nftdns: fetching %s failed, using the last good copy: %v\n", f.url, f.err)
	}
	lists, _, err := loadLists(srcs, o.skipInvalid, e.stderr, nil)
	if err != nil {
		return err
	}
	invalid := 0
	ix := rules.NewIndex(lists)
	for _, n := range names {
		d, err := ix.Check(n)
		if err != nil {
			invalid++
			fmt.Fprintf(e.stdout, "%s: invalid name: %v\n", n, err)
			continue
		}
		if note := rules.SuffixNote(d); note != "" {
			fmt.Fprintf(e.stdout, "%s: %s; %s\n", n, d, note)
			continue
		}
		fmt.Fprintf(e.stdout, "%s: %s\n", n, d)
	}
	if invalid > 0 {
		return inputErrorf("%d of %d names invalid", invalid, len(names))
	}
	return nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
