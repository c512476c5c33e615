package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Lock takes the store's exclusive lock, creating the state directory if
// needed, so that two nftdns processes changing the same table run one after
// the other: without it both could compute the same next seq. It waits until
// ctx is done. The lock is released by the returned function or when the
// process exits (flock(2) locks die with their file descriptor).
func (s *Store) Lock(ctx context.Context) (unlock func(), err error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(s.Dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: another nftdns is changing table %s: %w", path, filepath.Base(s.Dir), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// A crashed run may have left a staged generation behind; holding the
	// lock, nobody else can be using it.
	if err := s.removeStale(); err != nil {
		f.Close()
		return nil, fmt.Errorf("state directory: %w", err)
	}
	return func() { f.Close() }, nil
}
