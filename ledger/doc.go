// Package ledger is sealflow's transparency log.
package ledger

import (
	_ "golang.org/x/mod/sumdb/note"
	_ "golang.org/x/mod/sumdb/tlog"
)
