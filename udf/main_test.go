package udf

import (
	"context"
	"os"
	"testing"

	"github.com/tetratelabs/wazero"
)

// sharedCache lets the tests' runtimes compile each module once.
var sharedCache wazero.CompilationCache

func TestMain(m *testing.M) {
	sharedCache = wazero.NewCompilationCache()
	code := m.Run()
	sharedCache.Close(context.Background())
	os.Exit(code)
}
