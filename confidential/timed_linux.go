package confidential

import (
	"syscall"
	"time"
	"unsafe"
)

// ThreadClock reports whether threadCPU reads the thread CPU clock, so a
// TimedCodec measures something.
const ThreadClock = true

// threadCPU returns the CPU time of the calling OS thread
// (CLOCK_THREAD_CPUTIME_ID).
func threadCPU() time.Duration {
	var ts syscall.Timespec
	const clockThreadCPUTime = 3
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTime, uintptr(unsafe.Pointer(&ts)), 0)
	return time.Duration(ts.Nano())
}
