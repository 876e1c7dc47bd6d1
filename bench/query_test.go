package bench

import (
	"context"
	"testing"
	"time"
)

// TestRunQuerySealCPU runs q0 with every edge an exchange in this process
// (some 30 MB in 400 frames, 10 to 20 ms of sealing: enough to stand
// out of the estimate's noise): sealed, the summary carries the CPU time
// spent sealing, a plausible share of the run's; in plaintext, or sealed
// without seal timing, none.
func TestRunQuerySealCPU(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the engine on an embedded NATS server")
	}
	for _, tc := range []struct {
		name                    string
		plaintext, noSealTiming bool
		wantSeal                bool
	}{
		{"sealed", false, false, true},
		{"plaintext", true, false, false},
		{"sealed untimed", false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := RunQuery(ctx, QueryOptions{Query: "q0", Events: 200_000, Seed: 1, NoChain: true,
				Plaintext: tc.plaintext, NoSealTiming: tc.noSealTiming})
			if err != nil {
				t.Fatal(err)
			}
			if s.Frames == 0 || s.Sealed == tc.plaintext {
				t.Fatalf("summary %+v: want frames exchanged, sealed %t", s, !tc.plaintext)
			}
			if s.SealTimed != tc.wantSeal {
				t.Errorf("seal timed %t, want %t", s.SealTimed, tc.wantSeal)
			}
			if !tc.wantSeal {
				if s.SealCPUSeconds != 0 {
					t.Errorf("seal CPU %g s, want 0", s.SealCPUSeconds)
				}
				return
			}
			t.Logf("seal CPU %g s of %g CPU-s, %d frames", s.SealCPUSeconds, s.CPUSeconds, s.Frames)
			if s.SealCPUSeconds <= 0 || s.SealShare() >= 0.5 {
				t.Errorf("seal CPU %g s of %g CPU-s (share %.3f), want > 0 and less than half", s.SealCPUSeconds, s.CPUSeconds, s.SealShare())
			}
		})
	}
}
