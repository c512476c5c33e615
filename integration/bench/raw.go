//go:build linux

package main

import (
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The hot loops of the load generator and the responder make blocking
// system calls on threads locked to their goroutine, through these
// allocation-free wrappers. With GOMAXPROCS at 2, each blocking recv made
// Go's sysmon take the P away and hand it on, tens of thousands of times a
// second, and sysmon's own 20 µs polling burned CPU on and off. With many
// spare Ps (maxProcs) sysmon leaves a P in a short syscall alone, and a
// returning thread takes its P back on the fast path. (RawSyscall, which
// skips the scheduler altogether, is not an option: a goroutine preempted
// while others block in raw calls was never rescheduled, hanging the run.)
const maxProcs = 64

func rawRead(fd int, b []byte) (int, unix.Errno) {
	n, _, e := unix.Syscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), e
}

func rawWrite(fd int, b []byte) unix.Errno {
	_, _, e := unix.Syscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return e
}

// rawAddr is a peer address as the kernel returns it.
type rawAddr struct {
	sa  unix.RawSockaddrAny
	len uint32
}

func rawRecvfrom(fd int, b []byte, flags int, from *rawAddr) (int, unix.Errno) {
	from.len = unix.SizeofSockaddrAny
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		uintptr(flags), uintptr(unsafe.Pointer(&from.sa)), uintptr(unsafe.Pointer(&from.len)))
	return int(n), e
}

func rawSendto(fd int, b []byte, to *rawAddr) unix.Errno {
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		0, uintptr(unsafe.Pointer(&to.sa)), uintptr(to.len))
	return e
}

func rawSleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	unix.Syscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// ensureProcs gives every locked thread its own P, with room to spare for
// the rest of the program.
func ensureProcs() {
	if runtime.GOMAXPROCS(0) < maxProcs {
		runtime.GOMAXPROCS(maxProcs)
	}
}
