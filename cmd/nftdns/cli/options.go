package cli

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	ucli "github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"nftdns/cmd/nftdns/state"
	"nftdns/rules"
)

// Defaults of the flags.
const (
	defaultTable    = rules.DefaultTable
	defaultStateDir = "/var/lib/nftdns"
	defaultAction   = rules.DefaultAction
	defaultLogRate  = "1/second"
	defaultLogBurst = rules.DefaultLogBurst
)

// Flag names; config file keys are the same names.
const (
	flagConfig      = "config"
	flagNetns       = "netns"
	flagTable       = "table"
	flagStateDir    = "state-dir"
	flagDryRun      = "dry-run"
	flagSkipInvalid = "skip-invalid"
	flagListen      = "listen"
	flagUpstream    = "upstream"
	flagClient      = "client"
	flagBlocklist   = "blocklist"
	flagAllowlist   = "allowlist"
	flagStrict      = "strict"
	flagAction      = "action"
	flagLogRate     = "log-rate"
	flagLogBurst    = "log-burst"
	flagInterface   = "interface"
	flagNflogGroup  = "nflog-group"
	flagJSON        = "json"
	flagTo          = "to"
	flagIntercept   = "intercept"
	flagBlockDoT    = "block-dot"
)

func netnsFlag() ucli.Flag {
	return &ucli.StringFlag{Name: flagNetns, Usage: "network namespace `NS`: a NAME (/run/netns/NAME) or a path; default: the current one"}
}

func tableFlag() ucli.Flag {
	return &ucli.StringFlag{Name: flagTable, Value: defaultTable, Usage: "`NAME` of the inet table nftdns owns"}
}

func stateDirFlag() ucli.Flag {
	return &ucli.StringFlag{Name: flagStateDir, Value: defaultStateDir, Usage: "`DIR` where applied generations are kept (in DIR/TABLE/, mode 0700)"}
}

// applyFlags are the flags of apply, render and check; all but config and
// dry-run can also come from the config file.
func applyFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.StringFlag{Name: flagConfig, Usage: "YAML `FILE` whose keys are these flag names; command-line flags win"},
		netnsFlag(),
		tableFlag(),
		stateDirFlag(),
		&ucli.BoolFlag{Name: flagDryRun, Usage: "compile and show what would change versus the applied generation; touch nothing"},
		&ucli.BoolFlag{Name: flagSkipInvalid, Usage: "skip invalid list lines (and say how many) instead of failing"},
		&ucli.StringSliceFlag{Name: flagListen, Usage: "`ADDR` of this box that clients send DNS to (repeatable)"},
		&ucli.StringSliceFlag{Name: flagUpstream, Usage: "resolver `ADDR`, ADDR:PORT or [ADDR6]:PORT, port 53 by default (repeatable)"},
		&ucli.StringSliceFlag{Name: flagClient, Usage: "client network `CIDR` allowed to query (repeatable)"},
		&ucli.StringSliceFlag{Name: flagBlocklist, Usage: "blocklist `PATH` (a file, a glob or an http(s) URL): one name per line, or hosts format (repeatable)"},
		&ucli.StringSliceFlag{Name: flagAllowlist, Usage: "allowlist `PATH`, same syntax: names it covers are never blocked (repeatable)"},
		&ucli.StringFlag{Name: flagAction, Value: defaultAction, Usage: "`ACTION` for a blocked query: " + strings.Join(rules.Actions, ", ")},
		&ucli.BoolFlag{Name: flagStrict, Usage: "drop queries laid out unusually: records besides the question and one OPT, bytes after them, a TCP segment not holding exactly one query (counted as unusual_layout either way)"},
		&ucli.StringFlag{Name: flagLogRate, Value: defaultLogRate, Usage: "log blocked queries at most at this `RATE` (N/second, N/minute, N/hour, N/day)"},
		&ucli.UintFlag{Name: flagLogBurst, Value: defaultLogBurst, Usage: "burst `N` of the log rate limit"},
		&ucli.BoolFlag{Name: flagIntercept, Usage: "also check and send round robin to the upstreams the clients' DNS queries to any other address (hard-coded resolvers)"},
		&ucli.BoolFlag{Name: flagBlockDoT, Usage: "drop DNS over TLS (TCP and UDP port 853) from the client networks, so clients fall back to port 53"},
		&ucli.StringSliceFlag{Name: flagInterface, Usage: "client-facing interface `IF`: in-kernel answers (nxdomain, refused) go back out of these only (repeatable; required with those actions)"},
		&ucli.UintFlag{Name: flagNflogGroup, Usage: "log blocked (or, with log, matched) queries to nflog group `N` (1-65535) for 'nftdns watch' instead of the kernel log; 0 = kernel log"},
	}
}

// options are the merged settings of one command: flags over config file
// over defaults, still as text.
type options struct {
	netns, table, stateDir string
	dryRun, skipInvalid    bool
	strict                 bool
	full                   bool // apply --full: no incremental update
	listen, upstream       []string
	client                 []string
	blocklist, allowlist   []rules.ListSpec
	action, logRate        string
	logBurst               uint64
	intercept, blockDoT    bool
	interfaces             []string
	nflogGroup             uint64
	extra                  map[string]extraValue // from the config file, see run.go
}

// fileConfig is what a config file set; nil/unset fields were absent.
type fileConfig struct {
	path, dir   string
	set         map[string]bool
	netns       string
	table       string
	stateDir    string
	skipInvalid bool
	strict      bool
	listen      []string
	upstream    []string
	client      []string
	blocklist   []rules.ListSpec
	allowlist   []rules.ListSpec
	action      string
	logRate     string
	logBurst    uint64
	intercept   bool
	blockDoT    bool
	interfaces  []string
	nflogGroup  uint64
	extra       map[string]extraValue // keys of kind "extra", checked by their command
}

// extraValue is a config value checked by the command that uses it.
type extraValue struct{ value, where string }

// configKeyOrder lists the accepted config file keys, in help order, with
// their kind: string, path (relative to the file), bool, uint, list, or
// lists (a list of lists: each a path relative to the file, or a mapping
// with a path and per-list options, see listSpec).
var configKeyOrder = []struct{ name, kind string }{
	{flagNetns, "string"}, {flagTable, "string"}, {flagStateDir, "path"}, {flagSkipInvalid, "bool"},
	{flagListen, "list"}, {flagUpstream, "list"}, {flagClient, "list"}, {flagBlocklist, "lists"}, {flagAllowlist, "lists"},
	{flagAction, "string"}, {flagStrict, "bool"}, {flagLogRate, "string"}, {flagLogBurst, "uint"},
	{flagIntercept, "bool"}, {flagBlockDoT, "bool"}, {flagInterface, "list"}, {flagNflogGroup, "uint"},
	// Keys of 'nftdns run' (run.go); apply accepts and ignores them, so
	// one config serves both.
	{flagRefresh, "extra"}, {flagHealthInterval, "extra"}, {flagHealthFails, "extra"},
	{flagMetrics, "extra"}, {flagFlushOnExit, "extra"},
}

var configKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range configKeyOrder {
		m[k.name] = k.kind
	}
	return m
}()

func acceptedKeys() string {
	names := make([]string, len(configKeyOrder))
	for i, k := range configKeyOrder {
		names[i] = k.name
	}
	return strings.Join(names, ", ")
}

// loadConfig reads a YAML config file. Unknown keys, duplicate keys and
// values of the wrong kind are input errors naming the file and line.
// Relative paths (blocklist, state-dir) are taken relative to the file's
// directory, so a config works from any working directory.
func loadConfig(path string) (*fileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		// Same policy as a blocklist: a config that cannot be read as a
		// file (missing, a directory, a path under a file, no permission)
		// is bad input; only an I/O error on a readable file is not.
		var pe *os.PathError
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) ||
			errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.ENOTDIR) || !errors.As(err, &pe) {
			return nil, inputErrorf("config: %v", err)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	return parseConfig(data, path)
}

func parseConfig(data []byte, path string) (*fileConfig, error) {
	fc := &fileConfig{path: path, dir: filepath.Dir(path), set: map[string]bool{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, inputErrorf("config %s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return fc, nil // empty file
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return fc, nil // only comments
	}
	if root.Kind != yaml.MappingNode {
		return nil, inputErrorf("config %s:%d: want a mapping of flag names to values", path, root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		where := fmt.Sprintf("config %s:%d", path, k.Line)
		kind, ok := configKeys[key]
		if !ok {
			if key == flagConfig || key == flagDryRun || key == flagJSON {
				return nil, inputErrorf("%s: key %q is only a command-line flag", where, key)
			}
			return nil, inputErrorf("%s: unknown key %q (accepted: %s)", where, key, acceptedKeys())
		}
		if fc.set[key] {
			return nil, inputErrorf("%s: key %q given twice", where, key)
		}
		fc.set[key] = true
		if err := fc.setValue(key, kind, v, where); err != nil {
			return nil, err
		}
	}
	return fc, nil
}

func (fc *fileConfig) setValue(key, kind string, v *yaml.Node, where string) error {
	scalar := func() (string, error) {
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			return "", inputErrorf("%s: key %q wants a single value", where, key)
		}
		return v.Value, nil
	}
	switch kind {
	case "extra":
		s, err := scalar()
		if err != nil {
			return err
		}
		if fc.extra == nil {
			fc.extra = map[string]extraValue{}
		}
		fc.extra[key] = extraValue{value: s, where: where}
	case "string", "path":
		s, err := scalar()
		if err != nil {
			return err
		}
		if kind == "path" {
			s = fc.resolve(s)
		}
		switch key {
		case flagNetns:
			fc.netns = s
		case flagTable:
			fc.table = s
		case flagStateDir:
			fc.stateDir = s
		case flagAction:
			fc.action = s
		case flagLogRate:
			fc.logRate = s
		}
	case "bool":
		var b bool
		if v.Kind != yaml.ScalarNode || v.Decode(&b) != nil {
			return inputErrorf("%s: key %q wants true or false", where, key)
		}
		switch key {
		case flagSkipInvalid:
			fc.skipInvalid = b
		case flagStrict:
			fc.strict = b
		case flagIntercept:
			fc.intercept = b
		case flagBlockDoT:
			fc.blockDoT = b
		}
	case "uint":
		var n uint64
		if v.Kind != yaml.ScalarNode || v.Decode(&n) != nil {
			return inputErrorf("%s: key %q wants a non-negative integer", where, key)
		}
		if key == flagNflogGroup {
			fc.nflogGroup = n
		} else {
			fc.logBurst = n
		}
	case "lists":
		specs, err := fc.listSpecs(key, v, where)
		if err != nil {
			return err
		}
		if key == flagAllowlist {
			fc.allowlist = specs
		} else {
			fc.blocklist = specs
		}
	case "list":
		var items []string
		switch v.Kind {
		case yaml.ScalarNode: // a single value is a list of one
			s, err := scalar()
			if err != nil {
				return err
			}
			items = []string{s}
		case yaml.SequenceNode:
			for _, it := range v.Content {
				if it.Kind != yaml.ScalarNode || it.Tag == "!!null" {
					return inputErrorf("config %s:%d: key %q wants a list of strings", fc.path, it.Line, key)
				}
				items = append(items, it.Value)
			}
		default:
			return inputErrorf("%s: key %q wants a list", where, key)
		}
		switch key {
		case flagListen:
			fc.listen = items
		case flagUpstream:
			fc.upstream = items
		case flagClient:
			fc.client = items
		case flagInterface:
			fc.interfaces = items
		}
	}
	return nil
}

// listSpecs reads a blocklist or allowlist value: a path, or a sequence
// whose items are each a path or a mapping {path, format, subdomains,
// action} (action only for blocklists).
func (fc *fileConfig) listSpecs(key string, v *yaml.Node, where string) ([]rules.ListSpec, error) {
	items := []*yaml.Node{v}
	if v.Kind == yaml.SequenceNode {
		items = v.Content
	}
	var specs []rules.ListSpec
	for _, it := range items {
		at := fmt.Sprintf("config %s:%d", fc.path, it.Line)
		spec := rules.ListSpec{Allow: key == flagAllowlist}
		switch {
		case it.Kind == yaml.ScalarNode && it.Tag != "!!null":
			spec.Path = it.Value
		case it.Kind == yaml.MappingNode:
			seen := map[string]bool{}
			for i := 0; i+1 < len(it.Content); i += 2 {
				k, val := it.Content[i], it.Content[i+1]
				kat := fmt.Sprintf("config %s:%d", fc.path, k.Line)
				if seen[k.Value] {
					return nil, inputErrorf("%s: %s entry: key %q given twice", kat, key, k.Value)
				}
				seen[k.Value] = true
				str := func() (string, error) {
					if val.Kind != yaml.ScalarNode || val.Tag == "!!null" || val.Value == "" {
						return "", inputErrorf("%s: %s entry: %q wants a single value", kat, key, k.Value)
					}
					return val.Value, nil
				}
				var err error
				switch k.Value {
				case "path":
					spec.Path, err = str()
				case "format":
					spec.Format, err = str()
				case "action":
					if key == flagAllowlist {
						return nil, inputErrorf("%s: allowlist entry: %q is only for blocklists", kat, k.Value)
					}
					spec.Action, err = str()
				case "subdomains":
					if val.Kind != yaml.ScalarNode || val.Decode(&spec.Subdomains) != nil {
						err = inputErrorf("%s: %s entry: %q wants true or false", kat, key, k.Value)
					}
				default:
					err = inputErrorf("%s: %s entry: unknown key %q (accepted: path, format, subdomains%s)", kat, key, k.Value,
						map[bool]string{true: "", false: ", action"}[key == flagAllowlist])
				}
				if err != nil {
					return nil, err
				}
			}
			if spec.Path == "" {
				return nil, inputErrorf("%s: %s entry without a path", at, key)
			}
		default:
			return nil, inputErrorf("%s: key %q wants a path or a list of paths or {path: ...} mappings", at, key)
		}
		spec.Path = fc.resolve(spec.Path)
		specs = append(specs, spec)
	}
	return specs, nil
}

// resolve makes a relative path relative to the config file's directory.
func (fc *fileConfig) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || isURL(p) {
		return p
	}
	return filepath.Join(fc.dir, p)
}

// resolveOptions merges the command line (c.IsSet), the --config file and
// the defaults, in that order of precedence. A repeatable flag given on the
// command line replaces the file's list rather than adding to it.
func resolveOptions(c *ucli.Context) (*options, error) {
	fc := &fileConfig{set: map[string]bool{}}
	if p := c.String(flagConfig); p != "" {
		var err error
		if fc, err = loadConfig(p); err != nil {
			return nil, err
		}
	}
	str := func(name string, fromFile string) string {
		if !c.IsSet(name) && fc.set[name] {
			return fromFile
		}
		return c.String(name)
	}
	list := func(name string, fromFile []string) []string {
		if !c.IsSet(name) && fc.set[name] {
			return fromFile
		}
		return c.StringSlice(name)
	}
	specs := func(name string, fromFile []rules.ListSpec) []rules.ListSpec {
		if !c.IsSet(name) && fc.set[name] {
			return fromFile
		}
		var out []rules.ListSpec
		for _, p := range c.StringSlice(name) {
			out = append(out, rules.ListSpec{Path: p, Allow: name == flagAllowlist})
		}
		return out
	}
	o := &options{
		netns:     str(flagNetns, fc.netns),
		table:     str(flagTable, fc.table),
		stateDir:  str(flagStateDir, fc.stateDir),
		dryRun:    c.Bool(flagDryRun),
		full:      c.Bool(flagFull),
		listen:    list(flagListen, fc.listen),
		upstream:  list(flagUpstream, fc.upstream),
		client:    list(flagClient, fc.client),
		blocklist: specs(flagBlocklist, fc.blocklist),
		allowlist: specs(flagAllowlist, fc.allowlist),
		action:    str(flagAction, fc.action),
		logRate:   str(flagLogRate, fc.logRate),
	}
	o.extra = fc.extra
	boolean := func(name string, fromFile bool) bool {
		if !c.IsSet(name) && fc.set[name] {
			return fromFile
		}
		return c.Bool(name)
	}
	o.skipInvalid = boolean(flagSkipInvalid, fc.skipInvalid)
	o.strict = boolean(flagStrict, fc.strict)
	o.intercept = boolean(flagIntercept, fc.intercept)
	o.blockDoT = boolean(flagBlockDoT, fc.blockDoT)
	o.logBurst = uint64(c.Uint(flagLogBurst))
	if !c.IsSet(flagLogBurst) && fc.set[flagLogBurst] {
		o.logBurst = fc.logBurst
	}
	o.interfaces = list(flagInterface, fc.interfaces)
	o.nflogGroup = uint64(c.Uint(flagNflogGroup))
	if !c.IsSet(flagNflogGroup) && fc.set[flagNflogGroup] {
		o.nflogGroup = fc.nflogGroup
	}
	return o, nil
}

// require reports the first of the named list options that is empty, as a
// usage error that says where it can come from.
func (o *options) require(cmd string, names ...string) error {
	for _, n := range names {
		var v []string
		switch n {
		case flagListen:
			v = o.listen
		case flagUpstream:
			v = o.upstream
		case flagClient:
			v = o.client
		case flagBlocklist:
			if len(o.blocklist) > 0 {
				continue
			}
		}
		if len(v) == 0 {
			return usageErrorf(cmd, "missing --%s (give it on the command line or as %q in --config)", n, n)
		}
	}
	return nil
}

// settings converts the options to compile settings, and to the canonical
// text form recorded in the state directory. Bad values are input errors.
func (o *options) settings() (rules.Settings, state.Settings, error) {
	var s rules.Settings
	if err := checkTable(o.table); err != nil {
		return s, state.Settings{}, err
	}
	s.Table = o.table
	for _, v := range o.listen {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return s, state.Settings{}, inputErrorf("--listen %q: not an IP address", v)
		}
		s.Listen = append(s.Listen, a)
	}
	for _, v := range o.upstream {
		u, err := rules.ParseUpstream(v)
		if err != nil {
			return s, state.Settings{}, err
		}
		s.Upstreams = append(s.Upstreams, u)
	}
	for _, v := range o.client {
		p, err := parseClient(v)
		if err != nil {
			return s, state.Settings{}, err
		}
		s.Clients = append(s.Clients, p)
	}
	if !contains(rules.Actions, o.action) {
		return s, state.Settings{}, inputErrorf("--action %q: accepted values: %s", o.action, strings.Join(rules.Actions, ", "))
	}
	s.Action = o.action
	s.Interfaces = o.interfaces
	if o.nflogGroup > math.MaxUint16 {
		return s, state.Settings{}, inputErrorf("--nflog-group %d: want 1 to %d (0: the kernel log)", o.nflogGroup, math.MaxUint16)
	}
	s.NflogGroup = uint16(o.nflogGroup)
	for _, l := range o.blocklist {
		if l.Action != "" && !contains(rules.Actions, l.Action) {
			return s, state.Settings{}, inputErrorf("blocklist %s: action %q: accepted values: %s", l.Path, l.Action, strings.Join(rules.Actions, ", "))
		}
	}
	r, err := rules.ParseRate(o.logRate)
	if err != nil {
		return s, state.Settings{}, err
	}
	s.LogRate = r
	// 0 would silently become the default inside rules; refuse it instead.
	if o.logBurst == 0 || o.logBurst > math.MaxUint32 {
		return s, state.Settings{}, inputErrorf("--log-burst %d: want 1 to %d", o.logBurst, uint32(math.MaxUint32))
	}
	s.LogBurst = uint32(o.logBurst)
	s.Strict = o.strict
	s.Intercept, s.BlockDoT = o.intercept, o.blockDoT
	if err := s.Validate(); err != nil {
		return s, state.Settings{}, err
	}
	return s, canonical(s), nil
}

// canonical is the recorded text form of validated settings.
func canonical(s rules.Settings) state.Settings {
	cs := state.Settings{
		Table:      s.Table,
		Action:     s.Action,
		LogRate:    s.LogRate.String(),
		LogBurst:   s.LogBurst,
		Strict:     s.Strict,
		Intercept:  s.Intercept,
		BlockDoT:   s.BlockDoT,
		Listen:     []string{},
		Upstreams:  []string{},
		Clients:    []string{},
		Interfaces: s.Interfaces,
		NflogGroup: s.NflogGroup,
	}
	for _, a := range s.Listen {
		cs.Listen = append(cs.Listen, a.String())
	}
	for _, u := range s.Upstreams {
		cs.Upstreams = append(cs.Upstreams, u.String())
	}
	for _, p := range s.Clients {
		cs.Clients = append(cs.Clients, p.String())
	}
	return cs
}

// lists are the blocklists, then the allowlists.
func (o *options) lists() []rules.ListSpec {
	return append(append([]rules.ListSpec(nil), o.blocklist...), o.allowlist...)
}

// fromCanonical turns recorded settings back into options, for rollback.
func fromCanonical(cs state.Settings) *options {
	return &options{
		table:      cs.Table,
		listen:     cs.Listen,
		upstream:   cs.Upstreams,
		client:     cs.Clients,
		action:     cs.Action,
		logRate:    cs.LogRate,
		logBurst:   uint64(cs.LogBurst),
		strict:     cs.Strict,
		intercept:  cs.Intercept,
		blockDoT:   cs.BlockDoT,
		interfaces: cs.Interfaces,
		nflogGroup: uint64(cs.NflogGroup),
	}
}

// parseClient accepts a CIDR or a single address (a /32 or /128).
func parseClient(v string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(v); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, inputErrorf("--client %q: want a CIDR such as 198.18.0.0/24 or 2001:db8::/64", v)
	}
	return p, nil
}

// checkTable validates a table name for the commands that do not compile
// (flush, status, rollback). It follows rules.Settings.Validate: 1-64
// letters, digits, '-' or '_'; the name is also a directory name.
func checkTable(t string) error {
	ok := t != "" && len(t) <= 64
	for _, c := range t {
		ok = ok && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_')
	}
	if !ok {
		return inputErrorf("--table %q: use 1-64 letters, digits, '-' or '_'", t)
	}
	return state.CheckTableName(t)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
