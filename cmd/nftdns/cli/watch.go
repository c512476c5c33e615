package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"time"

	ucli "github.com/urfave/cli/v2"

	"nftdns/cmd/nftdns/watch"
	"nftdns/rules"
)

const flagGroup = "nflog-group"

// logSource is a subscription to an nflog group: watch.Listener, or a fake
// in tests.
type logSource interface {
	Run(ctx context.Context, onRecord func(watch.Record), onLoss func()) error
	Close() error
}

func listenNflog(netns string, group uint16) (logSource, error) {
	l, err := watch.Listen(netns, group)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func watchCommand(e *env) *ucli.Command {
	return &ucli.Command{
		Name:  "watch",
		Usage: "print blocked (in log mode: matched) queries as they happen",
		Description: "Subscribes to the nflog group the applied ruleset logs to and prints one line\n" +
			"per logged query: time, client address and port, name, type, protocol, action\n" +
			"and list. The group is the one recorded in the current generation unless\n" +
			"--nflog-group is given; a ruleset applied without --nflog-group logs to the\n" +
			"kernel log and cannot be watched. The log statement's rate limit (--log-rate,\n" +
			"--log-burst) applies: above it queries are still blocked and counted but not\n" +
			"shown. --json prints one object per line with the fields time, client,\n" +
			"client_port, server, server_port, name, type, proto, action, list, list_path\n" +
			"and prefix. Runs until SIGINT or SIGTERM, then exits 0.",
		Flags: []ucli.Flag{
			netnsFlag(), tableFlag(), stateDirFlag(),
			&ucli.UintFlag{Name: flagGroup, Usage: "nflog group `N` to read (default: the current generation's)"},
			&ucli.BoolFlag{Name: flagJSON, Usage: "print one JSON object per line"},
		},
		Action: func(c *ucli.Context) error { return runWatch(c, e) },
	}
}

// watchJSON is one line of 'watch --json'.
type watchJSON struct {
	Time       string `json:"time"`
	Client     string `json:"client"`
	ClientPort uint16 `json:"client_port"`
	Server     string `json:"server"`
	ServerPort uint16 `json:"server_port"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	Proto      string `json:"proto"`
	Action     string `json:"action"`          // "" when the prefix is not nftdns's
	List       *int   `json:"list"`            // list index; null when unknown
	ListPath   string `json:"list_path"`       // from the current generation; "" when unknown
	Prefix     string `json:"prefix"`          // the raw log prefix
	Error      string `json:"error,omitempty"` // why the packet could not be decoded

	src netip.AddrPort
}

func runWatch(c *ucli.Context, e *env) error {
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
	netns := netnsOf(c, cur)
	var group uint16
	switch {
	case c.IsSet(flagGroup):
		g := c.Uint(flagGroup)
		if g == 0 || g > math.MaxUint16 {
			return inputErrorf("--nflog-group %d: want 1 to %d", g, math.MaxUint16)
		}
		group = uint16(g)
	case cur == nil:
		return inputErrorf("no generation of table %s recorded in %s: give --nflog-group N (the group the ruleset was applied with)", table, store.Dir)
	case cur.Settings.NflogGroup == 0:
		return inputErrorf("generation %d of table %s logs to the kernel log, not to an nflog group: re-apply with --nflog-group N to watch (or read the kernel log: prefix \"nftdns \")", cur.Seq, table)
	default:
		group = cur.Settings.NflogGroup
	}
	var paths []string
	if cur != nil {
		for _, l := range cur.Lists {
			paths = append(paths, l.Path)
		}
	}

	listen := e.listen
	if listen == nil {
		listen = listenNflog
	}
	src, err := listen(netns, group)
	if err != nil {
		if errors.Is(err, watch.ErrGroupBusy) {
			return fmt.Errorf("%w%s; is another 'nftdns watch' running?", err, nsSuffix(netns))
		}
		return fmt.Errorf("subscribe to nflog group %d%s: %w", group, nsSuffix(netns), err)
	}
	defer src.Close()
	fmt.Fprintf(e.stderr, "nftdns: watching nflog group %d%s (Ctrl-C to stop)\n", group, nsSuffix(netns))

	asJSON := c.Bool(flagJSON)
	var werr error
	onRecord := func(r watch.Record) {
		if werr != nil {
			return
		}
		werr = printRecord(e.stdout, r, paths, asJSON)
	}
	onLoss := func() {
		fmt.Fprintln(e.stderr, "nftdns: some logged queries were lost (the receive queue overflowed)")
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	if err := src.Run(ctx, func(r watch.Record) {
		onRecord(r)
		if werr != nil {
			cancel()
		}
	}, onLoss); err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	return nil
}

// watchLine turns a record into its JSON shape (the text line is made from
// the same fields).
func watchLine(r watch.Record, paths []string) watchJSON {
	w := watchJSON{Time: r.Time.Format(time.RFC3339Nano), Prefix: r.Prefix}
	if a, n, ok := rules.ParseLogPrefix(r.Prefix); ok {
		w.Action = a
		w.List = &n
		if n >= 0 && n < len(paths) {
			w.ListPath = paths[n]
		}
	}
	q, err := watch.Decode(r.Payload)
	if err != nil {
		w.Error = err.Error()
	}
	if q.Src.IsValid() {
		w.src = q.Src
		w.Client, w.ClientPort = q.Src.Addr().String(), q.Src.Port()
		w.Server, w.ServerPort = q.Dst.Addr().String(), q.Dst.Port()
	}
	w.Proto, w.Name = q.Proto, q.Name
	if q.Name != "" {
		w.Type = q.TypeString()
	}
	return w
}

func printRecord(out io.Writer, r watch.Record, paths []string, asJSON bool) error {
	w := watchLine(r, paths)
	if asJSON {
		b, err := json.Marshal(w)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	client := "-"
	if w.src.IsValid() {
		client = w.src.String() // [v6]:port
	}
	list := "list ?"
	if w.List != nil {
		list = fmt.Sprintf("list %d", *w.List)
		if w.ListPath != "" {
			list += " (" + w.ListPath + ")"
		}
	}
	action := w.Action
	if action == "" {
		action = fmt.Sprintf("prefix %q", w.Prefix)
	}
	t := r.Time.Format("2006-01-02T15:04:05.000Z07:00")
	if w.Error != "" {
		_, err := fmt.Fprintf(out, "%s %s undecodable packet (%s) %s %s\n", t, client, w.Error, action, list)
		return err
	}
	_, err := fmt.Fprintf(out, "%s %s %s %s %s %s %s\n", t, client, w.Name, w.Type, w.Proto, action, list)
	return err
}
