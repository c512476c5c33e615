package cli

import (
	"context"
	"errors"

	"nftdns/nft"
	"nftdns/rules"
)

// nftKernel adapts *nft.Conn to kernel, translating its sentinel errors.
type nftKernel struct{ c *nft.Conn }

var _ kernel = nftKernel{}

func openNFT(netns string) (kernel, error) {
	c, err := nft.Open(netns)
	if err != nil {
		return nil, err
	}
	return nftKernel{c}, nil
}

func (k nftKernel) Apply(ctx context.Context, rs *rules.Ruleset) (*applyStats, error) {
	st, err := k.c.Apply(ctx, rs)
	if err != nil {
		return nil, translate(err)
	}
	return &applyStats{Elements: st.Elements, Messages: st.Messages, Bytes: st.Bytes, Duration: st.Duration, Generation: st.Generation}, nil
}

func (k nftKernel) ApplyOver(ctx context.Context, rs, base *rules.Ruleset, baseID, id []byte) (*applyStats, error) {
	var b *nft.Base
	if base != nil {
		b = &nft.Base{Ruleset: base, ApplyID: baseID}
	}
	st, err := k.c.ApplyOver(ctx, rs, b, id)
	if err != nil {
		return nil, translate(err)
	}
	return &applyStats{Elements: st.Elements, Messages: st.Messages, Bytes: st.Bytes, Duration: st.Duration, Generation: st.Generation,
		ApplyID: st.ApplyID, Incremental: st.Incremental, Added: st.Added, Removed: st.Removed, Fallback: st.Fallback}, nil
}

func (k nftKernel) Flush(ctx context.Context, table string) (bool, error) {
	existed, err := k.c.Flush(ctx, table)
	return existed, translate(err)
}

func (k nftKernel) Counters(ctx context.Context, table string) (map[string]counterValue, error) {
	cs, err := k.c.Counters(ctx, table)
	if err != nil {
		return nil, translate(err)
	}
	out := make(map[string]counterValue, len(cs))
	for name, v := range cs {
		out[name] = counterValue{Packets: v.Packets, Bytes: v.Bytes}
	}
	return out, nil
}

func (k nftKernel) TableExists(ctx context.Context, table string) (bool, error) {
	ok, err := k.c.TableExists(ctx, table)
	return ok, translate(err)
}

func (k nftKernel) LinkExists(ctx context.Context, name string) (bool, error) {
	return k.c.LinkExists(ctx, name)
}

func (k nftKernel) Close() error { return k.c.Close() }

// translate keeps the nft error and its text but makes it match the CLI's
// sentinels too.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, nft.ErrGenerationChanged):
		return &alsoError{err, errConcurrentChange}
	case errors.Is(err, nft.ErrNoTable):
		return &alsoError{err, errNoTable}
	}
	return err
}

// alsoError is err, also matching sentinel with errors.Is.
type alsoError struct{ err, sentinel error }

func (e *alsoError) Error() string   { return e.err.Error() }
func (e *alsoError) Unwrap() []error { return []error{e.err, e.sentinel} }

// elementDiff counts the kernel elements an incremental apply from a to b
// would add and delete, or says why it would be a full apply.
func elementDiff(a, b *rules.Ruleset) (added, removed int, why string) { return nft.ElementDiff(a, b) }
