//go:build linux

package harness

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread switched into the named network namespace
// (/run/netns/NAME) and returns its error.
//
// fn should only create sockets: a socket stays in the namespace it was
// created in, so the caller may use it from any goroutine afterwards. Do runs
// fn in a fresh goroutine so the caller's thread is never switched. The
// thread is switched back before it is unlocked; if switching back fails the
// thread stays locked and Go discards it when the goroutine ends, so a
// goroutine in the wrong namespace can never be scheduled elsewhere.
func Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %q: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %q: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Deliberately no UnlockOSThread: see the doc comment.
			errc <- errors.Join(ferr, fmt.Errorf("return from netns %q: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
