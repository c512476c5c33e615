//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// busyTicks is the CPU time spent busy on all CPUs since boot, in USER_HZ
// ticks (/proc/stat: user, nice, system, irq, softirq, steal; not idle or
// iowait). Softirq is where most of the packet path runs.
func busyTicks() (uint64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var sum uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

// userHZ is the unit of /proc/stat; 100 on every Linux architecture Go
// supports.
const userHZ = 100

// kernMem is kernel memory from /proc/meminfo, in bytes.
type kernMem struct{ Slab, Vmalloc, Percpu int64 }

func readKernMem() (kernMem, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return kernMem{}, err
	}
	defer f.Close()
	var m kernMem
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Slab:":
			m.Slab = kb * 1024
		case "VmallocUsed:":
			m.Vmalloc = kb * 1024
		case "Percpu:":
			m.Percpu = kb * 1024
		}
	}
	return m, sc.Err()
}

func (m kernMem) sub(o kernMem) kernMem {
	return kernMem{m.Slab - o.Slab, m.Vmalloc - o.Vmalloc, m.Percpu - o.Percpu}
}

// childRun is a finished child process: wall time and peak RSS.
type childRun struct {
	Wall     time.Duration
	MaxRSSKB int64
	Output   string
}

// gnuTime is GNU time, which reports its child's peak RSS. The child's own
// wait4 rusage would not do: Go starts children with vfork semantics
// (CLONE_VM), and exec folds the parent's high-water RSS into the child's
// ru_maxrss, so every child would seem as big as this process (which holds a
// million-name list).
const gnuTime = "/usr/bin/time"

// runChild runs a command, bounded by timeout, and fails on a non-zero exit.
func runChild(ctx context.Context, timeout time.Duration, stdin string, name string, args ...string) (childRun, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rssFile, err := os.CreateTemp("", "nftdns-bench-rss-")
	if err != nil {
		return childRun{}, err
	}
	rssFile.Close()
	defer os.Remove(rssFile.Name())
	useTime := true
	if _, err := os.Stat(gnuTime); err != nil {
		useTime = false // fall back to rusage (an overestimate, see gnuTime)
	}
	var cmd *exec.Cmd
	if useTime {
		cmd = exec.CommandContext(ctx, gnuTime, append([]string{"-q", "-f", "%M", "-o", rssFile.Name(), name}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, name, args...)
	}
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err = cmd.Run()
	r := childRun{Wall: time.Since(t0), Output: out.String()}
	if b, rerr := os.ReadFile(rssFile.Name()); useTime && rerr == nil {
		f := strings.Fields(string(b))
		if len(f) > 0 {
			r.MaxRSSKB, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
		}
	} else if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.MaxRSSKB = ru.Maxrss
		}
	}
	if err != nil {
		return r, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(out.String(), 5))
	}
	return r, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// cpuSnap is a reading of the CPU time spent on the benchmark's packets:
// this process (load generator, responder; the kernel charges a thread with
// the softirq work done in its syscalls, which is where veth forwarding
// through the boxes mostly runs) and every kernel thread (ksoftirqd for
// deferred softirq work, kworkers for conntrack garbage collection, RCU
// threads freeing sockets and conntrack entries). Unlike /proc/stat it
// leaves out other processes (another build or test run on the machine),
// which made system-wide numbers swing by a factor of 4.
type cpuSnap struct {
	selfUs  float64
	kthread map[int]uint64 // pid -> utime+stime ticks
}

func readCPU() (cpuSnap, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return cpuSnap{}, err
	}
	s := cpuSnap{
		selfUs:  float64(ru.Utime.Sec*1e6+ru.Utime.Usec) + float64(ru.Stime.Sec*1e6+ru.Stime.Usec),
		kthread: map[int]uint64{},
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return s, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the ")" closing comm: state (3), ppid (4), ...,
		// utime (14), stime (15).
		str := string(b)
		f := strings.Fields(str[strings.LastIndexByte(str, ')')+1:])
		if len(f) < 13 || (f[1] != "2" && pid != 2) {
			continue
		}
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		s.kthread[pid] = ut + st
	}
	return s, nil
}

// since is the CPU time between two readings, µs.
func (s cpuSnap) since(old cpuSnap) float64 {
	us := s.selfUs - old.selfUs
	for pid, t := range s.kthread {
		us += float64(t-min(t, old.kthread[pid])) * 1e6 / userHZ
	}
	return us
}
