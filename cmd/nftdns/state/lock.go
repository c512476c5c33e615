package state

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

const lockFile = "lock"

// Lock takes the store's exclusive lock, so that two nftdns processes
// changing the same table run one after the other: without it both could
// compute the same next seq. It waits until ctx is done. The lock is
// released by the returned function or when the process exits (flock(2)
// locks die with their file descriptor).
//
// Lock creates the state directory if needed, and unlock removes again what
// this Lock created if nothing was recorded in it, so that a command that
// fails (a bad list line, a refused ruleset) leaves the state directory as
// it found it, down to not creating it. Removing a lock file others may be
// waiting on is safe because Lock checks, once it holds the lock, that the
// file it locked is still the one at the path, and starts over if not.
func (s *Store) Lock(ctx context.Context) (unlock func(), err error) {
	path := filepath.Join(s.Dir, lockFile)
	// A racing unlock can remove the directories between our MkdirAll and
	// OpenFile; that is over in a moment, so a few attempts are plenty.
	const attempts = 10
	for try := 1; ; try++ {
		created := s.missingDirs()
		f, err := s.openLockFile(path)
		if errors.Is(err, fs.ErrNotExist) && try < attempts {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
		if err := flock(ctx, f, path, filepath.Base(s.Dir)); err != nil {
			f.Close()
			return nil, err
		}
		if !stillAt(f, path) {
			// The holder we waited for removed the directory it had
			// created: start over with a fresh lock file.
			f.Close()
			if try < attempts {
				continue
			}
			return nil, fmt.Errorf("lock %s: the lock file keeps being replaced", path)
		}
		// A crashed run may have left a staged generation behind; holding
		// the lock, nobody else can be using it.
		if err := s.removeStale(); err != nil {
			s.removeIfUnused(created)
			f.Close()
			return nil, fmt.Errorf("state directory: %w", err)
		}
		return func() {
			s.removeIfUnused(created) // still holding the lock
			f.Close()
		}, nil
	}
}

func (s *Store) openLockFile(path string) (*os.File, error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}

// flock waits for an exclusive flock(2) on f until ctx is done.
func flock(ctx context.Context, f *os.File, path, table string) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lock %s: another nftdns is changing table %s: %w", path, table, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stillAt reports whether f is the file at path.
func stillAt(f *os.File, path string) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	pi, err := os.Stat(path)
	return err == nil && os.SameFile(fi, pi)
}

// missingDirs returns the store's directories that do not exist, the table
// directory first, then the root.
func (s *Store) missingDirs() []string {
	var dirs []string
	for _, d := range []string{s.Dir, s.root} {
		if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// removeIfUnused removes dirs (created by Lock) when the table directory
// holds nothing but the lock file. Only call it holding the lock. It is
// best effort: whatever it cannot remove (a directory someone else has
// started using meanwhile) stays, which is harmless.
func (s *Store) removeIfUnused(dirs []string) {
	if len(dirs) == 0 || dirs[0] != s.Dir {
		return
	}
	ents, err := os.ReadDir(s.Dir)
	if err != nil || len(ents) != 1 || ents[0].Name() != lockFile {
		return
	}
	if os.Remove(filepath.Join(s.Dir, lockFile)) != nil {
		return
	}
	for _, d := range dirs {
		// Fails, as it should, when another process created an entry
		// meanwhile (a new lock file, another table's directory).
		if os.Remove(d) != nil {
			return
		}
	}
}
