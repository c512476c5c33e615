package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	ucli "github.com/urfave/cli/v2"

	"nftdns/cmd/nftdns/state"
	"nftdns/rules"
)

// Flags of 'nftdns run'; the config file takes the same keys.
const (
	flagRefresh        = "refresh"
	flagHealthInterval = "health-interval"
	flagHealthFails    = "health-fails"
	flagMetrics        = "metrics"
	flagFlushOnExit    = "flush-on-exit"
)

// Defaults of 'nftdns run'.
const (
	defaultRefresh        = 24 * time.Hour
	defaultHealthInterval = 5 * time.Second
	defaultHealthFails    = 3
)

func runCommand(e *env) *ucli.Command {
	var flags []ucli.Flag
	for _, f := range applyFlags() {
		if f.Names()[0] != flagDryRun {
			flags = append(flags, f)
		}
	}
	flags = append(flags,
		&ucli.DurationFlag{Name: flagRefresh, Value: defaultRefresh, Usage: "re-read the lists (and fetch URL lists) every `DURATION`, and on SIGHUP"},
		&ucli.DurationFlag{Name: flagHealthInterval, Value: defaultHealthInterval, Usage: "health-check every upstream every `DURATION`"},
		&ucli.UintFlag{Name: flagHealthFails, Value: defaultHealthFails, Usage: "take an upstream out of the round robin after `N` failed checks in a row"},
		&ucli.StringFlag{Name: flagMetrics, Usage: "serve Prometheus metrics on `ADDR` (host:port) at /metrics"},
		&ucli.BoolFlag{Name: flagFlushOnExit, Usage: "delete the table on SIGTERM/SIGINT (default: leave it in place)"},
	)
	return &ucli.Command{
		Name:  "run",
		Usage: "apply, then keep the lists fresh and the upstreams health-checked",
		Description: "Applies like 'apply' at start, then re-reads the lists every --refresh and on\n" +
			"SIGHUP (re-reading --config too), sending list-only changes as set element\n" +
			"updates. Every --health-interval it sends each upstream a DNS query over UDP from\n" +
			"the box's namespace; after --health-fails failures in a row the upstream's\n" +
			"round-robin slots go to the healthy upstreams of its family, and come back when\n" +
			"it answers again (all down: all kept). Logs are structured (log/slog) on stderr.\n" +
			"SIGTERM or SIGINT exits 0 leaving the table, unless --flush-on-exit.",
		Flags:  flags,
		Action: func(c *ucli.Context) error { return runDaemon(c, e) },
	}
}

// runOptions are run's own options.
type runOptions struct {
	refresh, healthInterval time.Duration
	healthFails             int
	metrics                 string
	flushOnExit             bool
}

// resolveRunOptions merges run's flags over the config file's keys over
// the defaults.
func resolveRunOptions(c *ucli.Context, o *options) (runOptions, error) {
	ro := runOptions{
		refresh: c.Duration(flagRefresh), healthInterval: c.Duration(flagHealthInterval),
		healthFails: int(c.Uint(flagHealthFails)), metrics: c.String(flagMetrics), flushOnExit: c.Bool(flagFlushOnExit),
	}
	for key, v := range o.extra {
		if c.IsSet(key) {
			continue
		}
		bad := func(want string) error {
			return inputErrorf("%s: key %q wants %s, not %q", v.where, key, want, v.value)
		}
		switch key {
		case flagRefresh, flagHealthInterval:
			d, err := time.ParseDuration(v.value)
			if err != nil {
				return ro, bad("a duration such as 24h or 5s")
			}
			if key == flagRefresh {
				ro.refresh = d
			} else {
				ro.healthInterval = d
			}
		case flagHealthFails:
			n, err := strconv.Atoi(v.value)
			if err != nil || n < 1 {
				return ro, bad("a positive integer")
			}
			ro.healthFails = n
		case flagMetrics:
			ro.metrics = v.value
		case flagFlushOnExit:
			b, err := strconv.ParseBool(v.value)
			if err != nil {
				return ro, bad("true or false")
			}
			ro.flushOnExit = b
		}
	}
	switch {
	case ro.refresh < time.Second:
		return ro, inputErrorf("--%s %v: want at least 1s", flagRefresh, ro.refresh)
	case ro.healthInterval < 10*time.Millisecond:
		return ro, inputErrorf("--%s %v: want at least 10ms", flagHealthInterval, ro.healthInterval)
	case ro.healthFails < 1 || ro.healthFails > 1000:
		return ro, inputErrorf("--%s %d: want 1 to 1000", flagHealthFails, ro.healthFails)
	}
	return ro, nil
}

// upstreamHealth is one upstream's health-check state.
type upstreamHealth struct {
	up    bool
	fails int // failed checks in a row
}

// daemon is the state of 'nftdns run'. Its methods run on the main loop's
// goroutine, one at a time; mu guards what the metrics read.
type daemon struct {
	c     *ucli.Context
	e     *env
	ro    runOptions
	log   *slog.Logger
	m     *metrics
	probe *prober

	netns string
	store *state.Store

	mu        sync.Mutex
	compiled  *rules.Ruleset // the last compile: every upstream in its slots
	applied   *rules.Ruleset // what the kernel got: compiled, remapped
	applyID   []byte
	upstreams []netip.AddrPort
	health    map[netip.AddrPort]*upstreamHealth
}

func runDaemon(c *ucli.Context, e *env) error {
	if err := noArgs(c); err != nil {
		return err
	}
	o, err := applyOptions(c)
	if err != nil {
		return err
	}
	ro, err := resolveRunOptions(c, o)
	if err != nil {
		return err
	}
	_, cs, err := o.settings()
	if err != nil {
		return err
	}
	store, err := openStore(o.stateDir, cs.Table)
	if err != nil {
		return err
	}
	p, err := newProber(o.netns)
	if err != nil {
		return err
	}
	defer p.Close()
	d := &daemon{
		c: c, e: e, ro: ro, probe: p, netns: o.netns, store: store,
		log:    slog.New(slog.NewTextHandler(e.stderr, nil)),
		health: map[netip.AddrPort]*upstreamHealth{},
	}
	d.m = newMetrics(e, o.netns, cs.Table)
	ctx := c.Context
	if ro.metrics != "" {
		stop, err := d.m.serve(ro.metrics, func(err error) { d.log.Error("metrics", "err", err) })
		if err != nil {
			return fmt.Errorf("--%s %s: %w", flagMetrics, ro.metrics, err)
		}
		defer stop()
		d.log.Info("metrics", "addr", ro.metrics)
	}
	// A daemon that cannot apply at start exits: systemd restarts it, and
	// an operator sees the error at once.
	if err := d.refresh(ctx, "start"); err != nil {
		return err
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	refresh := time.NewTicker(ro.refresh)
	defer refresh.Stop()
	health := time.NewTicker(ro.healthInterval)
	defer health.Stop()
	for {
		select {
		case <-ctx.Done():
			return d.exit()
		case <-hup:
			_ = d.refresh(ctx, "sighup")
		case <-refresh.C:
			_ = d.refresh(ctx, "timer")
		case <-health.C:
			d.checkHealth(ctx)
		}
	}
}

// exit leaves the ruleset in place, or flushes it with --flush-on-exit,
// under the table's lock.
func (d *daemon) exit() error {
	if !d.ro.flushOnExit {
		d.log.Info("exit", "table", "left in place")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unlock, err := d.store.Lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	k, err := d.e.open(d.netns)
	if err != nil {
		return err
	}
	defer k.Close()
	table := d.store.Table()
	if _, err := k.Flush(ctx, table); err != nil {
		d.log.Error("exit", "flush", table, "err", err)
		return fmt.Errorf("flush table inet %s: %w", table, err)
	}
	d.log.Info("exit", "table", "flushed")
	return nil
}

// refresh re-reads the config and the lists and applies what changed, as
// a new generation, under the table's lock.
func (d *daemon) refresh(ctx context.Context, why string) error {
	start := time.Now()
	err := d.refreshOnce(ctx, why)
	if err != nil {
		d.m.refreshes.WithLabelValues("error").Inc()
		d.log.Error("refresh", "trigger", why, "err", err)
		return err
	}
	d.m.refreshes.WithLabelValues("ok").Inc()
	d.m.refreshSeconds.Observe(time.Since(start).Seconds())
	d.m.lastSuccess.WithLabelValues("refresh").SetToCurrentTime()
	return nil
}

func (d *daemon) refreshOnce(ctx context.Context, why string) error {
	start := time.Now() // duration in the log: read, fetch, parse, compile, apply
	o, err := applyOptions(d.c)
	if err != nil {
		return err
	}
	s, cs, err := o.settings()
	if err != nil {
		return err
	}
	if cs.Table != d.store.Table() || o.netns != d.netns {
		return fmt.Errorf("table and netns cannot change while running (restart nftdns run)")
	}
	unlock, err := d.store.Lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	staged, err := d.store.Stage()
	if err != nil {
		return err
	}
	defer staged.Discard()
	in, err := compileOptionsLog(o, d.e, staged)
	if err != nil {
		return err
	}
	d.noteFetches(in)
	d.setUpstreams(s.Upstreams)

	d.mu.Lock()
	via := &applyVia{base: d.applied, baseID: d.applyID, quiet: true, rebuilt: unknownRR}
	d.mu.Unlock()
	via.send = func(rs *rules.Ruleset) *rules.Ruleset {
		out, share := remapRR(rs, d.upFunc())
		d.setShares(share)
		return out
	}
	g, err := commitApplyVia(ctx, d.e, d.store, staged, in, d.netns, 0, via)
	kind := "full"
	if via.stats != nil && via.stats.Incremental {
		kind = "incremental"
	}
	if err != nil {
		d.m.applies.WithLabelValues(kind, "error").Inc()
		// The kernel may hold anything now: the next apply rebuilds its
		// base from the state directory and checks the apply id.
		d.mu.Lock()
		d.applied, d.applyID = nil, nil
		d.mu.Unlock()
		return err
	}
	st := via.stats
	d.m.applies.WithLabelValues(kind, "ok").Inc()
	d.m.applySeconds.WithLabelValues(kind).Observe(st.Duration.Seconds())
	d.m.lastSuccess.WithLabelValues("apply").SetToCurrentTime()
	d.m.names.Set(float64(in.rs.Stats.Names))
	d.m.elements.Set(float64(st.Elements))
	d.m.listNames.Reset()
	for _, f := range in.files {
		d.m.listNames.WithLabelValues(f.Path).Set(float64(f.Names))
	}
	d.mu.Lock()
	d.compiled, d.applied, d.applyID = in.rs, via.sent, st.ApplyID
	d.mu.Unlock()
	// Parsing and compiling a big list leaves garbage the size of the
	// lists; an idle daemon should not hold on to it.
	debug.FreeOSMemory()
	d.log.Info("apply", "trigger", why, "generation", g.Seq, "kind", kind, "fallback", st.Fallback,
		"added", st.Added, "removed", st.Removed, "names", in.rs.Stats.Names, "elements", st.Elements,
		"apply_duration", st.Duration, "duration", time.Since(start), "ruleset_generation", st.Generation)
	return nil
}

// setUpstreams starts tracking the configured upstreams, keeping the state
// of those that stay; new ones start healthy.
func (d *daemon) setUpstreams(ups []netip.AddrPort) {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := map[netip.AddrPort]*upstreamHealth{}
	var list []netip.AddrPort
	for _, u := range ups {
		u = netip.AddrPortFrom(u.Addr().Unmap(), u.Port())
		if h[u] != nil {
			continue
		}
		if old := d.health[u]; old != nil {
			h[u] = old
		} else {
			h[u] = &upstreamHealth{up: true}
		}
		list = append(list, u)
	}
	d.health, d.upstreams = h, list
	d.m.upstreamUp.Reset()
	for u, s := range h {
		d.m.upstreamUp.WithLabelValues(u.String()).Set(b2f(s.up))
	}
}

// upFunc snapshots the health of the upstreams for remapRR; unknown
// upstreams count as up.
func (d *daemon) upFunc() func(netip.AddrPort) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	snap := make(map[netip.AddrPort]bool, len(d.health))
	for u, s := range d.health {
		snap[u] = s.up
	}
	return func(u netip.AddrPort) bool {
		up, ok := snap[u]
		return !ok || up
	}
}

// setShares publishes each upstream's share of the round robin, 0 for
// those out of it.
func (d *daemon) setShares(share map[netip.AddrPort]float64) {
	d.mu.Lock()
	ups := d.upstreams
	d.mu.Unlock()
	d.m.upstreamShare.Reset()
	for _, u := range ups {
		d.m.upstreamShare.WithLabelValues(u.String()).Set(share[u])
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// checkHealth probes every upstream at once and, if one changed state,
// rewrites the round-robin slots in one transaction.
func (d *daemon) checkHealth(ctx context.Context) {
	d.mu.Lock()
	ups := append([]netip.AddrPort(nil), d.upstreams...)
	d.mu.Unlock()
	timeout := min(d.ro.healthInterval, 2*time.Second)
	results := make([]error, len(ups))
	var wg sync.WaitGroup
	for i, u := range ups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = d.probe.probe(ctx, u, timeout)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	changed := false
	d.mu.Lock()
	for i, u := range ups {
		h := d.health[u]
		if h == nil {
			continue
		}
		if results[i] == nil {
			d.m.healthChecks.WithLabelValues(u.String(), "ok").Inc()
			h.fails = 0
			if !h.up {
				h.up, changed = true, true
				d.log.Info("health", "upstream", u.String(), "state", "up")
			}
			continue
		}
		d.m.healthChecks.WithLabelValues(u.String(), "fail").Inc()
		h.fails++
		if h.up && h.fails >= d.ro.healthFails {
			h.up, changed = false, true
			d.log.Warn("health", "upstream", u.String(), "state", "down", "fails", h.fails, "err", results[i])
		}
	}
	for u, h := range d.health {
		d.m.upstreamUp.WithLabelValues(u.String()).Set(b2f(h.up))
	}
	d.mu.Unlock()
	if changed {
		d.applyHealth(ctx)
	}
}

// applyHealth sends the round-robin maps for the current health as a
// transaction of element changes over what the kernel holds. It is not a
// new generation: the inputs did not change.
func (d *daemon) applyHealth(ctx context.Context) {
	unlock, err := d.store.Lock(ctx)
	if err != nil {
		d.log.Error("health apply", "err", err)
		return
	}
	defer unlock()
	d.mu.Lock()
	compiled, base, baseID := d.compiled, d.applied, d.applyID
	d.mu.Unlock()
	if compiled == nil {
		return
	}
	rs, share := remapRR(compiled, d.upFunc())
	k, err := d.e.open(d.netns)
	if err != nil {
		d.m.applies.WithLabelValues("health", "error").Inc()
		d.log.Error("health apply", "err", err)
		return
	}
	defer k.Close()
	st, err := k.ApplyOver(ctx, rs, base, baseID, nil)
	if err != nil {
		d.m.applies.WithLabelValues("health", "error").Inc()
		d.log.Error("health apply", "err", err)
		d.mu.Lock()
		d.applied, d.applyID = nil, nil
		d.mu.Unlock()
		return
	}
	d.m.applies.WithLabelValues("health", "ok").Inc()
	d.m.applySeconds.WithLabelValues("health").Observe(st.Duration.Seconds())
	d.m.lastSuccess.WithLabelValues("health").SetToCurrentTime()
	d.setShares(share)
	d.mu.Lock()
	d.applied, d.applyID = rs, st.ApplyID
	d.mu.Unlock()
	d.log.Info("health apply", "incremental", st.Incremental, "fallback", st.Fallback,
		"added", st.Added, "removed", st.Removed, "duration", st.Duration, "ruleset_generation", st.Generation)
}

// compileOptionsLog is compileOptions for the daemon: list problems are
// logged rather than printed.
func compileOptionsLog(o *options, e *env, st *state.Staged) (*compiled, error) {
	le := *e
	le.stderr = io.Discard
	in, err := compileOptions(o, &le, st)
	if err != nil {
		return nil, err
	}
	return in, nil
}

// noteFetches logs and counts the URL lists whose fetch failed.
func (d *daemon) noteFetches(in *compiled) {
	for _, f := range in.fetchFailures {
		d.m.listFetchFails.WithLabelValues(f.url).Inc()
		d.log.Warn("fetch", "url", f.url, "err", f.err, "using", "last good copy")
	}
}
