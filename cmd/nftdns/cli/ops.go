package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	ucli "github.com/urfave/cli/v2"

	"nftdns/cmd/nftdns/state"
	"nftdns/rules"
)

func flushCommand(e *env) *ucli.Command {
	return &ucli.Command{
		Name:        "flush",
		Usage:       "delete the table inet TABLE (and nothing else)",
		Description: "Deletes nftdns's table; the state directory is left alone, so 'nftdns rollback'\nor 'nftdns apply' can restore it.",
		Flags:       []ucli.Flag{netnsFlag(), tableFlag()},
		Action: func(c *ucli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			table, netns := c.String(flagTable), c.String(flagNetns)
			if err := checkTable(table); err != nil {
				return err
			}
			k, err := e.open(netns)
			if err != nil {
				return fmt.Errorf("open netlink%s: %w", nsSuffix(netns), err)
			}
			defer k.Close()
			existed, err := k.Flush(c.Context, table)
			if err != nil {
				return fmt.Errorf("flush table inet %s%s: %w", table, nsSuffix(netns), err)
			}
			if existed {
				fmt.Fprintf(e.stdout, "flushed table inet %s%s\n", table, nsSuffix(netns))
			} else {
				fmt.Fprintf(e.stdout, "table inet %s not present%s\n", table, nsSuffix(netns))
			}
			return nil
		},
	}
}

func rollbackCommand(e *env) *ucli.Command {
	return &ucli.Command{
		Name:  "rollback",
		Usage: "re-apply the generation before the current one",
		Description: "Re-applies, in one kernel transaction, the generation recorded before the current\n" +
			"one, from the settings and list copies in STATE-DIR/TABLE (the original list files\n" +
			"are not read, so it works after they changed, and after a reboot). The result is\n" +
			"recorded as a NEW generation marked 'rollback of N', which becomes current: the\n" +
			"history only grows, and a second rollback undoes the first (like 'cd -'). Use\n" +
			"--to SEQ to re-apply any kept generation ('nftdns status' shows the current one,\n" +
			"'ls STATE-DIR/TABLE' the kept ones). Without --netns, the namespace recorded in\n" +
			"the current generation is used.",
		Flags: []ucli.Flag{
			netnsFlag(), tableFlag(), stateDirFlag(),
			&ucli.IntFlag{Name: flagTo, Usage: "re-apply generation `SEQ` instead of the one before the current"},
		},
		Action: func(c *ucli.Context) error { return runRollback(c, e) },
	}
}

func runRollback(c *ucli.Context, e *env) error {
	if err := noArgs(c); err != nil {
		return err
	}
	table, store, err := tableStore(c)
	if err != nil {
		return err
	}
	noGen := func() error {
		return fmt.Errorf("no generation of table %s recorded in %s: nothing to roll back", table, store.Dir)
	}
	// Checked before locking too, so a mistyped --state-dir is not created.
	if _, err := store.Current(); errors.Is(err, state.ErrNoGeneration) {
		return noGen()
	}
	// Held from reading the current generation to recording the new one.
	unlock, err := store.Lock(c.Context)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := store.Current()
	if errors.Is(err, state.ErrNoGeneration) {
		return noGen()
	}
	if err != nil {
		return err
	}
	var target *state.Generation
	if c.IsSet(flagTo) {
		if target, err = store.Get(c.Int(flagTo)); err != nil {
			return fmt.Errorf("rollback --to %d: %w", c.Int(flagTo), err)
		}
	} else if target, err = store.Previous(); errors.Is(err, state.ErrNoGeneration) {
		return fmt.Errorf("no generation before the current one (%d) is kept in %s: nothing to roll back to", cur.Seq, store.Dir)
	} else if err != nil {
		return err
	}

	// The stored copies are opened first, so that a missing one is
	// reported as such, and streamed into the new generation's copies as
	// they are parsed.
	srcs := make([]listSource, len(target.Lists))
	for i, rec := range target.Lists {
		f, err := target.OpenList(i)
		if err != nil {
			return err
		}
		defer f.Close()
		srcs[i] = listSource{path: rec.Path, stored: f, spec: specOptions(rec.Path, rec.ListOptions)}
	}
	o := fromCanonical(target.Settings)
	o.skipInvalid = target.SkipInvalid
	s, cs, err := o.settings()
	if err != nil {
		return fmt.Errorf("generation %d: %w", target.Seq, err)
	}
	staged, err := store.Stage()
	if err != nil {
		return err
	}
	defer staged.Discard()
	// Stored copies parse as they did; --skip-invalid is replayed quietly.
	lists, files, err := loadLists(srcs, o.skipInvalid, io.Discard, staged)
	if err != nil {
		return fmt.Errorf("generation %d: %w", target.Seq, err)
	}
	rs, err := rules.Compile(s, lists)
	if err != nil {
		return fmt.Errorf("generation %d: %w", target.Seq, err)
	}
	netns := netnsOf(c, cur)
	in := &compiled{opts: o, settings: cs, lists: lists, files: files, rs: rs}
	_, err = commitApply(c.Context, e, store, staged, in, netns, target.Seq)
	return err
}

// tableStore checks --table and opens its state directory (for the
// commands that do not compile: rollback, status, watch).
func tableStore(c *ucli.Context) (string, *state.Store, error) {
	table := c.String(flagTable)
	if err := checkTable(table); err != nil {
		return "", nil, err
	}
	store, err := openStore(c.String(flagStateDir), table)
	return table, store, err
}

// openStore opens the state of table in dir; a table name the state
// directory cannot hold is an input error.
func openStore(dir, table string) (*state.Store, error) {
	store, err := state.Open(dir, table)
	if err != nil {
		return nil, inputErrorf("--table: %v", err)
	}
	return store, nil
}

// currentOrNil is the current generation, nil if none was recorded.
func currentOrNil(store *state.Store) (*state.Generation, error) {
	cur, err := store.Current()
	if errors.Is(err, state.ErrNoGeneration) {
		return nil, nil
	}
	return cur, err
}

// netnsOf is the namespace a command on the table works in: --netns if
// given, else the one the generation cur (nil: none) was applied in.
func netnsOf(c *ucli.Context, cur *state.Generation) string {
	switch {
	case c.IsSet(flagNetns):
		return c.String(flagNetns)
	case cur != nil:
		return cur.Netns
	}
	return ""
}

func statusCommand(e *env) *ucli.Command {
	return &ucli.Command{
		Name:  "status",
		Usage: "show the applied generation and the table's counters",
		Description: "Shows the current generation from STATE-DIR/TABLE and the kernel's counters.\n" +
			"Without --netns, the namespace recorded in the current generation is used.\n" +
			"--json prints one object with the fields generation, applied_at, hash,\n" +
			"rollback_of, netns, table, table_present, lists [{path, names}], listen,\n" +
			"upstreams, clients and counters {name: {packets, bytes}}; fields without a\n" +
			"value are null (no generation) or empty.",
		Flags: []ucli.Flag{
			netnsFlag(), tableFlag(), stateDirFlag(),
			&ucli.BoolFlag{Name: flagJSON, Usage: "print JSON"},
		},
		Action: func(c *ucli.Context) error { return runStatus(c, e) },
	}
}

// statusJSON is the stable shape of 'status --json'.
type statusJSON struct {
	Table        string                 `json:"table"`
	Netns        string                 `json:"netns"`
	TablePresent bool                   `json:"table_present"`
	Generation   *int                   `json:"generation"`
	AppliedAt    *string                `json:"applied_at"`
	Hash         *string                `json:"hash"`
	RollbackOf   *int                   `json:"rollback_of"`
	Lists        []statusList           `json:"lists"`
	Action       string                 `json:"action,omitempty"`
	Interfaces   []string               `json:"interfaces,omitempty"`
	NflogGroup   uint16                 `json:"nflog_group,omitempty"`
	Listen       []string               `json:"listen"`
	Upstreams    []string               `json:"upstreams"`
	Clients      []string               `json:"clients"`
	Intercept    bool                   `json:"intercept"`
	BlockDoT     bool                   `json:"block_dot"`
	Counters     map[string]counterJSON `json:"counters"`
}

type statusList struct {
	Path    string `json:"path"`
	Names   int    `json:"names"`
	Action  string `json:"action,omitempty"`  // the list's own action; "" = the global one
	Counter string `json:"counter,omitempty"` // its named counter (rules.ListCounter) in counters
}

type counterJSON struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

func runStatus(c *ucli.Context, e *env) error {
	if err := noArgs(c); err != nil {
		return err
	}
	table, store, err := tableStore(c)
	if err != nil {
		return err
	}
	cur, err := currentOrNil(store)
	if err != nil {
		return err
	}
	st := statusJSON{
		Table: table, Lists: []statusList{}, Listen: []string{}, Upstreams: []string{},
		Clients: []string{}, Counters: map[string]counterJSON{},
	}
	if cur != nil {
		seq, at, hash := cur.Seq, cur.Time.Format(time.RFC3339), cur.Hash
		st.Generation, st.AppliedAt, st.Hash = &seq, &at, &hash
		if cur.RollbackOf != 0 {
			rb := cur.RollbackOf
			st.RollbackOf = &rb
		}
		for i, l := range cur.Lists {
			st.Lists = append(st.Lists, statusList{Path: l.Path, Names: l.Names, Action: listActionOf(l, cur.Settings.Action), Counter: rules.ListCounter(i)})
		}
		st.Action = cur.Settings.Action
		st.Interfaces = cur.Settings.Interfaces
		st.NflogGroup = cur.Settings.NflogGroup
		st.Listen = append(st.Listen, cur.Settings.Listen...)
		st.Upstreams = append(st.Upstreams, cur.Settings.Upstreams...)
		st.Clients = append(st.Clients, cur.Settings.Clients...)
		st.Intercept, st.BlockDoT = cur.Settings.Intercept, cur.Settings.BlockDoT
	}
	st.Netns = netnsOf(c, cur)

	k, err := e.open(st.Netns)
	if err != nil {
		return fmt.Errorf("open netlink%s: %w", nsSuffix(st.Netns), err)
	}
	defer k.Close()
	counters, err := k.Counters(c.Context, table)
	switch {
	case errors.Is(err, errNoTable):
		st.TablePresent = false
	case err != nil:
		return fmt.Errorf("read counters of table inet %s%s: %w", table, nsSuffix(st.Netns), err)
	default:
		st.TablePresent = true
		for name, v := range counters {
			st.Counters[name] = counterJSON(v)
		}
	}

	if c.Bool(flagJSON) {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(e.stdout, &st, store.Dir)
	return nil
}

// printStatus is the human form of status.
func printStatus(w io.Writer, st *statusJSON, stateDir string) {
	if st.TablePresent {
		fmt.Fprintf(w, "table inet %s%s: present\n", st.Table, nsSuffix(st.Netns))
	} else {
		fmt.Fprintf(w, "table inet %s%s: not present\n", st.Table, nsSuffix(st.Netns))
	}
	if st.Generation == nil {
		fmt.Fprintf(w, "generation: none recorded in %s\n", stateDir)
		if st.TablePresent {
			fmt.Fprintln(w, "  (the table was not applied with this state directory)")
		}
	} else {
		fmt.Fprintf(w, "generation: %d, applied %s, %s\n", *st.Generation, *st.AppliedAt, *st.Hash)
		if st.RollbackOf != nil {
			fmt.Fprintf(w, "  a rollback to generation %d\n", *st.RollbackOf)
		}
		if !st.TablePresent {
			fmt.Fprintln(w, "  recorded but not in the kernel: 'nftdns rollback --to N' or 'nftdns apply' restores it")
		}
	}
	if st.Generation != nil {
		fmt.Fprintln(w, "lists:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, l := range st.Lists {
			matched := "-"
			if v, ok := st.Counters[l.Counter]; ok {
				matched = fmt.Sprint(v.Packets)
			}
			fmt.Fprintf(tw, "  %s\t%d names\t%s\t%s matched\n", l.Path, l.Names, l.Action, matched)
		}
		tw.Flush()
		fmt.Fprintf(w, "listen:     %s\n", join(st.Listen))
		fmt.Fprintf(w, "upstreams:  %s\n", join(st.Upstreams))
		fmt.Fprintf(w, "clients:    %s\n", join(st.Clients))
		fmt.Fprintf(w, "intercept:  %s\n", onOff(st.Intercept))
		fmt.Fprintf(w, "block-dot:  %s\n", onOff(st.BlockDoT))
		if len(st.Interfaces) > 0 {
			fmt.Fprintf(w, "interfaces: %s\n", join(st.Interfaces))
		}
		if st.NflogGroup != 0 {
			fmt.Fprintf(w, "nflog group: %d (nftdns watch --nflog-group %d)\n", st.NflogGroup, st.NflogGroup)
		}
	}
	if !st.TablePresent {
		return
	}
	// Known counters first, in rules' order, then any others by name.
	names := rules.AllCounters()
	known := map[string]bool{}
	for _, n := range names {
		known[n] = true
	}
	for _, n := range sortedKeys(st.Counters) {
		if !known[n] {
			names = append(names, n)
		}
	}
	width := len("counter")
	for _, n := range names {
		width = max(width, len(n))
	}
	fmt.Fprintf(w, "%-*s  %14s  %16s\n", width, "counter", "packets", "bytes")
	for _, n := range names {
		if v, ok := st.Counters[n]; ok {
			fmt.Fprintf(w, "%-*s  %14d  %16d\n", width, n, v.Packets, v.Bytes)
		} else {
			fmt.Fprintf(w, "%-*s  %14s  %16s\n", width, n, "-", "-")
		}
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func join(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	out := s[0]
	for _, v := range s[1:] {
		out += ", " + v
	}
	return out
}

// listActionOf is the action a recorded list was applied with.
func listActionOf(l state.ListRecord, global string) string {
	if l.ListOptions.Action != "" {
		return l.ListOptions.Action
	}
	if l.ListOptions.Allow {
		return "allow"
	}
	return global
}
