// Package policy holds per-stream owner policies written in CEL.
package policy

import (
	_ "github.com/google/cel-go/cel"
	_ "sigs.k8s.io/yaml"
)
