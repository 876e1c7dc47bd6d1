// Package smartgrid holds the example files README.md uses; its test checks
// that they stay valid.
package smartgrid

import (
	"os"
	"testing"

	"github.com/sealflow/sealflow/policy"
)

func TestPolicyCompiles(t *testing.T) {
	b, err := os.ReadFile("policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policy.CompileBytes(b); err != nil {
		t.Fatal(err)
	}
}
