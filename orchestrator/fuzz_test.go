package orchestrator

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/sealflow/sealflow/party"
)

// FuzzApply feeds the state machine arbitrary statement bytes, and arbitrary
// bodies correctly signed by a registered owner, for every statement type.
// Nothing may panic, and a refused statement must leave the state unchanged.
func FuzzApply(f *testing.F) {
	f.Add([]byte("garbage"), "stream.register", []byte(`{"name": "s"}`))
	f.Add([]byte{}, "service.approve", []byte(`{"stream": "meter-a", "digest": "x"}`))
	f.Add([]byte{}, "node.admit", []byte(`{"identity": null, "nonce": "AAAA"}`))
	f.Add([]byte{}, "job.deploy", []byte(`{"service": "svc"}`))
	f.Add([]byte{}, "stream.key", []byte(`{"stream": "meter-a", "epoch": 9, "wrapped": "AQAg"}`))
	w := newWorld(f, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
	f.Fuzz(func(t *testing.T, raw []byte, typ string, body []byte) {
		before, _ := w.m.MarshalState()
		w.now = w.now.Add(time.Second)
		if _, err := w.m.Apply(w.now, raw); err == nil {
			t.Fatalf("unsigned bytes %q were applied", raw)
		}
		if !json.Valid(body) {
			return
		}
		signed, err := party.Sign(alice, typ, json.RawMessage(body), time.Minute, w.now)
		if err != nil {
			return
		}
		_, err = w.m.Apply(w.now, signed)
		after, _ := w.m.MarshalState()
		if err != nil && !sameExceptReplay(before, after) {
			t.Fatalf("refused %s statement (%v) changed the state", typ, err)
		}
	})
}

// sameExceptReplay compares two saved states, ignoring the replay set and the
// time of the last statement seen (which every verified statement updates).
func sameExceptReplay(a, b []byte) bool {
	strip := func(data []byte) []byte {
		var st State
		if json.Unmarshal(data, &st) != nil {
			return data
		}
		st.Recent, st.LastSeen = nil, time.Time{}
		out, _ := json.Marshal(st)
		return out
	}
	return bytes.Equal(strip(a), strip(b))
}
