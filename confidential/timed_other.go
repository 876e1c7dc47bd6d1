//go:build !linux

package confidential

import "time"

// ThreadClock reports whether threadCPU reads the thread CPU clock: not
// here, so a TimedCodec reads zero.
const ThreadClock = false

// threadCPU returns 0: the thread CPU clock is read on Linux only, so a
// TimedCodec's Spent stays zero elsewhere.
func threadCPU() time.Duration { return 0 }
